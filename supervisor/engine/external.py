"""What the state machine does for an external service (``external = true``, or a unit outside ``up --only``
that a unit here requires): a service that runs elsewhere, known only through its ``[ready]`` and ``[live]``
probes. Called by the service's runner (:class:`supervisor.engine.service.Service`) in place of the local
decisions; its host is :class:`supervisor.engine.externalhost.ExternalHost` (no process, no log file, no prepare).

* Start: a run is a round of probing. The service is ``starting`` while its ``[ready]`` probes run (with their
  fast-start back-off up to ``interval``), ``ready`` when they pass. Its own ``requires``/``after`` are not
  waited on: it runs elsewhere whatever this machine does, so it is probed from the start.
* ``[ready] timeout``: when it passes, the service says so once (qasup's output and an event: ``not ready
  within 30s: tcp 10.0.0.5:7800: ... (external: still probing)``; ``last_error``: ``not ready within 30s
  (external: still probing)``) and stays ``starting``: it keeps probing and becomes
  ``ready`` whenever the remote service answers. What requires it keeps waiting.
* ``[live]`` at its failure threshold, by ``action``:

  - ``restart`` (the default): the service goes back to ``starting`` at once (a new instance, probing
    again; ``restarts`` counts it), and ``ready`` when its ``[ready]`` probes pass again. What requires it
    reacts as to a local required dependency that restarts: a running dependent keeps running, one that names
    it in ``restart_with`` is restarted once it is ``ready`` again (a new instance, ready), one not started yet
    waits for it.
  - ``fail``: the service is ``failed`` and keeps probing; what requires it is stopped and ``failed``
    (the engine's ``dep-fail`` rule: "requires X, which failed"); when its ``[ready]`` probes pass again it is
    ``ready`` and those dependents start again by themselves (``dep-fail`` holds nothing).
  - ``warn``: as for a local service: said once, shown as its last error, it stays ``ready``.

* ``qasup stop``: probing stops (``stopped``, held until started; what requires it is stopped and waits, the
  ``dep-wait`` rule); ``start`` probes again; ``restart`` is stop then start. The shutdown stops its probing at
  once (nothing to signal, the stop budget is not used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from supervisor.engine.liveness import LIVENESS
from supervisor.engine.states import Hold, ServiceState, StopReason
from supervisor.plan.resolve import describe_checks

if TYPE_CHECKING:
    from supervisor.engine.counters import ServiceCounters
    from supervisor.engine.instance import Instance, ServiceHost, StackView
    from supervisor.plan.resolve import ResolvedUnit

__all__ = ["evaluate", "fit_host", "live_failed", "ready_timeout"]

S = ServiceState


class Service(Protocol):
    """What these decisions touch of a service (:class:`supervisor.engine.service.Service`)."""

    name: str
    stack: StackView
    unit: ResolvedUnit
    state: ServiceState
    hold: Hold | None
    inst: Instance | None
    host: ServiceHost
    last_error: str | None
    live_failures: int
    restarts: int
    counters: ServiceCounters
    removed: bool

    def set_state(self, state: ServiceState, message: str | None = None) -> None: ...
    def begin_stop(self, reason: StopReason, failure: str | None = None, why: str | None = None) -> None: ...
    def launch(self, message: str | None = None, state: ServiceState | None = None) -> None: ...


def evaluate(svc: Service) -> None:
    """An external service's :meth:`Service.evaluate`: probe unless stopped, held or in back-off; the
    shutdown (or its removal) stops the probing at once, before its dependents are stopped."""
    stack = svc.stack
    if stack.shutting_down or svc.removed:
        if svc.inst is None:
            if svc.state not in (S.FAILED, S.DISABLED):
                svc.set_state(S.STOPPED)
        elif not svc.inst.terminating:
            svc.begin_stop(StopReason.SHUTDOWN if stack.shutting_down else StopReason.RELOAD)
        return
    if svc.inst is not None or svc.state == S.BACKOFF or svc.hold is not None:
        return
    svc.launch(f"external: probing {describe_checks(svc.unit.ready)}")


def ready_timeout(svc: Service, inst: Instance, why: str) -> None:
    """``[ready] timeout`` passed: say it once, keep probing (the service stays ``starting``)."""
    if inst.terminating or svc.state != S.STARTING:
        return
    limit = f"not ready within {svc.unit.ready.timeout:g}s"
    svc.last_error = f"{limit} (external: still probing)"   # waiting_on says what it waits on now
    msg = f"{limit}: {why} (external: still probing)"
    svc.stack.say(f"{svc.name}: {msg}")
    svc.stack.record(svc, svc.state, msg)


def live_failed(svc: Service, inst: Instance, failures: int, why: str) -> bool:
    """``[live]`` reached its threshold; True when handled here (``restart`` and ``fail``), False to leave it
    to :func:`supervisor.engine.liveness.live_failed` (``warn``)."""
    live = svc.unit.live
    if live is None or inst.terminating or svc.state != S.READY or live.action == "warn":
        return False
    text = f"{LIVENESS}{failures} failed checks in a row: {why}"
    svc.counters.live_failed(0, failures)
    svc.live_failures = 0
    svc.restarts += 1
    old = svc.inst
    if old is not None:   # its probing ends; the runner drops what the old run still posts
        old.terminating = True
        old.stop_reason = StopReason.LIVE_RESTART
        svc.host.stop(old, 0.0)
        svc.inst = None
    if live.action == "fail":
        svc.stack.say(f"{svc.name}: {text}: failed (external: still probing; what requires it fails meanwhile)")
        svc.last_error = text
        svc.launch(f"{text} (external: still probing)", S.FAILED)
    else:
        svc.stack.say(f"{svc.name}: {text}: probing again")
        svc.last_error = text
        svc.launch(f"{text}: probing again")
    return True


def fit_host(svc: Service, make: object) -> None:
    """Before a launch: give the service the host its unit needs now (a reload may have made a local unit
    external or the other way round). Hosts that do not say which they are (tests' fakes) are kept."""
    kind = getattr(svc.host, "external", None)
    if kind is None or kind == svc.unit.external or not callable(make):
        return
    old = svc.host
    svc.host = make(svc)
    tg = getattr(old, "tg", None)
    if tg is not None:
        svc.host.bind(tg)
    old.close()
