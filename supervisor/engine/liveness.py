"""What the state machine decides when ``[live]`` checks fail or pass again, and when a service it names in
``restart_with`` has a new instance. Called by the service's runner for the matching message (or its Poke),
like every other handler of its state machine; the checks themselves run in the host (it posts
``LiveFailed`` at ``failures`` failed rounds in a row and at every failed round after, and ``LiveRecovered``
when a round passes after that).

``[live] action``:

* ``restart``: stop the run and start it again. The restart happens whatever ``[restart] policy`` says (as an
  ``[[on_log]]`` restart rule does) and counts as a failure: back-off, ``max_restarts`` and give-up apply.
* ``fail``: stop the run; the service is ``failed`` and held until a user starts it (what requires it fails).
* ``warn``: say it and show it as the last error; the service stays ``ready``. ``LiveRecovered`` clears it.

``restart_with = [NAMES]``: at each launch the service notes the instance number of every service it names;
when one of them is ``ready`` with a newer instance (a user restart, a crash and back-off restart, a liveness
or rule restart, a reload, a user stop followed by a start), the service is restarted if it runs. A restart
chain (A restart_with B restart_with C) follows by itself, and there is no loop: ``restart_with`` implies
``after``, and cycles are refused at check time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from supervisor.engine.states import Hold, ServiceState, StopReason

if TYPE_CHECKING:
    from supervisor.engine.instance import Instance, StackView
    from supervisor.plan.resolve import ResolvedUnit

LIVENESS = "liveness: "   # the prefix of a liveness failure in last_error


class Service(Protocol):
    """What these decisions touch of a service (:class:`supervisor.engine.service.Service`)."""

    name: str
    stack: StackView
    unit: ResolvedUnit
    state: ServiceState
    hold: Hold | None
    inst: Instance | None
    last_error: str | None
    live_failures: int
    peers_seen: dict[str, int]

    def begin_stop(self, reason: StopReason, failure: str | None = None, why: str | None = None) -> None: ...


def live_failed(svc: Service, inst: Instance, failures: int, why: str) -> None:
    """``failures`` rounds of ``[live]`` checks in a row failed (``why``: the last one's reason)."""
    live = svc.unit.live
    if live is None or inst.terminating or svc.state != ServiceState.READY:
        return
    first = svc.live_failures == 0
    svc.live_failures = failures
    text = f"{LIVENESS}{failures} failed checks in a row: {why}"
    svc.last_error = text
    if live.action == "warn":
        if first:   # said once per streak; status shows the count as it grows
            svc.stack.say(f"{svc.name}: {text} (action warn: it stays ready)")
            svc.stack.record(svc, svc.state, text)
        return
    if live.action == "fail":
        svc.stack.say(f"{svc.name}: {text}: stopping it (action fail: it stays failed until started)")
        svc.begin_stop(StopReason.LIVE_FAIL, failure=text, why=text)
    else:
        svc.stack.say(f"{svc.name}: {text}: restarting it")
        svc.begin_stop(StopReason.LIVE_RESTART, failure=text, why=text)


def live_recovered(svc: Service, inst: Instance) -> None:
    """A round of ``[live]`` checks passed after a ``LiveFailed`` (only a ``warn`` leaves the run going)."""
    if inst.terminating or svc.live_failures == 0:
        return
    svc.live_failures = 0
    if svc.last_error is not None and svc.last_error.startswith(LIVENESS):
        svc.last_error = None
    text = f"{LIVENESS}checks pass again"
    svc.stack.say(f"{svc.name}: {text}")
    svc.stack.record(svc, svc.state, text)


# ---------------------------------------------------------------------------------------------- restart_with

def note_peers(svc: Service, names: Iterable[str]) -> None:
    """At a launch: the instance of each service named in ``restart_with`` that this run starts against."""
    seen: dict[str, int] = {}
    for d in names:
        dep = svc.stack.service(d)
        n = dep.inst.number if dep.inst is not None else 0
        # an instance that is not ready yet is not the one this run saw: its readiness restarts this run
        seen[d] = n if dep.state == ServiceState.READY or dep.inst is None else n - 1
    svc.peers_seen = seen


def renewed_peer(svc: Service, names: Iterable[str]) -> str | None:
    """The first service named in ``restart_with`` that is ready with a newer instance than this run saw."""
    for d in names:
        seen = svc.peers_seen.get(d)
        dep = svc.stack.service(d)
        if seen is not None and dep.state == ServiceState.READY and dep.inst is not None and dep.inst.number > seen:
            return d
    return None


def follow_peers(svc: Service, names: Iterable[str]) -> None:
    """A running service: restart it when a service it names in ``restart_with`` has a new instance, ready."""
    peer = renewed_peer(svc, names)
    if peer is None:
        return
    why = f"restart with {peer}: {peer} has a new instance, ready"
    svc.stack.say(f"{svc.name}: {why}")
    svc.begin_stop(StopReason.RESTART_WITH, why=why)
