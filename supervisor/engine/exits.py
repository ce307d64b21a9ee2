"""What a service's state machine does when a run is over (``Exited``): the stop reason decides first (a
user's stop, a restart, a dependency, a fail rule or liveness failure), then the restart policy (restart after
a back-off, settle, or give up). Called by the service's runner, like every other handler of its machine."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Protocol

from supervisor.engine import states
from supervisor.engine.policy import GiveUp, Settle
from supervisor.engine.states import REQUESTED, RESTARTING, Hold, ServiceState, StopReason

if TYPE_CHECKING:
    from supervisor.config.spec import UnitSpec
    from supervisor.engine.instance import Instance, StackView
    from supervisor.engine.requests import Service as RequestTarget

    class Service(RequestTarget, Protocol):
        """What the exit touches of a service (:class:`supervisor.engine.service.Service`)."""

        name: str
        stack: StackView
        exit_code: int | None
        last_error: str | None
        removed: bool
        restarts: int

        @property
        def spec(self) -> UnitSpec: ...

S = ServiceState


def on_exit(svc: Service, inst: Instance, code: int | None, failure: str | None) -> None:
    """The run is over (``Exited``): what comes next, from why it was stopped and the restart policy."""
    svc.inst = None
    svc.exit_code = code
    now = svc.stack.clock()
    reason = inst.stop_reason
    failure = failure or inst.failure
    ready_for = now - inst.ready_at if inst.ready_at else 0.0
    stack = svc.stack
    if failure and reason not in REQUESTED:
        svc.last_error = failure
    elif code not in (0, None) and reason is None:
        assert code is not None
        svc.last_error = f"exited with code {code}" + (f" (signal {code - 128})" if code > 128 else "")
    what = f"exit code {code}" if code is not None else (failure or "not started")
    if not svc.splan.enabled and not svc.removed:   # a reload disabled it while it ran
        svc.set_state(S.DISABLED, what)
        return
    if stack.shutting_down or reason is StopReason.SHUTDOWN or svc.removed:
        svc.set_state(S.FAILED if svc.state == S.FAILED else S.STOPPED, what)
        svc.evaluate()
        return
    if reason is StopReason.USER:
        svc.set_state(S.STOPPED, what)
        return
    if reason in RESTARTING:
        if reason is StopReason.RESTART:
            svc.policy.delay = svc.spec.restart.delay
        svc.set_state(S.WAITING, what)
        svc.evaluate()
        return
    if reason is StopReason.DEP_FAIL:
        svc.set_state(S.FAILED, svc.last_error)
        return
    if reason in states.FAILING:
        svc.hold = Hold.FAILED
        svc.set_state(S.FAILED, svc.last_error)
        return
    failed = failure is not None or code != 0 or reason is StopReason.READY_TIMEOUT or reason in states.FORCED_RESTARTS
    if inst.pid is None and failure is not None:
        stack.say(f"{svc.name}: start failed: {failure}")
    elif failed and reason is None:
        stack.say(f"{svc.name}: exited with code {code}"
                  + (f" (killed by {_signame(code - 128)})" if code and code > 128 else ""))
    decision = svc.policy.decide(now=now, failed=failed, ready_for=ready_for,
                                  forced=reason in states.FORCED_RESTARTS, jitter=stack.jitter())
    if isinstance(decision, Settle):
        if decision.failed:
            svc.hold = Hold.FAILED
            svc.set_state(S.FAILED, svc.last_error)
        else:
            svc.set_state(S.STOPPED, what)
        return
    if isinstance(decision, GiveUp):
        msg = (f"gave up after {decision.max_restarts} restarts within {decision.window:g}s"
               + (f"; last error: {svc.last_error}" if svc.last_error else ""))
        svc.last_error = msg
        svc.hold = Hold.FAILED
        stack.say(f"{svc.name}: {msg}")
        svc.set_state(S.FAILED, msg)
        if decision.abort:
            stack.abort(f"{svc.name}: {msg}")
        return
    svc.restarts += 1
    svc.backoff_token += 1
    svc.set_state(S.BACKOFF, f"restart {svc.restarts} in {decision.delay:.2f}s")
    svc.host.start_timer(svc.backoff_token, decision.delay)


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"
