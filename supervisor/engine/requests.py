"""What a user's request (and a reload) does to a service: start, stop, restart, replace. Called by the
service's runner for the matching message, like every other handler of its state machine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from supervisor.engine.states import Hold, ServiceState, StopReason

if TYPE_CHECKING:
    from supervisor.engine.instance import Instance, ServiceHost
    from supervisor.engine.policy import RestartPolicy
    from supervisor.plan.resolve import ResolvedUnit
    from supervisor.plan.result import ServicePlan


class Service(Protocol):
    """What a request may touch of a service (:class:`supervisor.engine.service.Service`)."""

    state: ServiceState
    hold: Hold | None
    inst: Instance | None
    policy: RestartPolicy
    backoff_token: int
    splan: ServicePlan
    host: ServiceHost

    def set_state(self, state: ServiceState, message: str | None = None) -> None: ...
    def begin_stop(self, reason: StopReason, failure: str | None = None) -> None: ...
    def evaluate(self) -> None: ...
    def wake_waiters(self) -> None: ...
    def take_unit(self, unit: ResolvedUnit) -> None: ...


def _release(svc: Service) -> None:
    """Clear the hold; a stop still waiting for the service learns at once that it was overtaken."""
    if svc.hold is not None:
        svc.hold = None
        svc.wake_waiters()


def start(svc: Service) -> None:
    """`qasup start`: clear a hold; a failed service forgets its restart history."""
    if svc.state == ServiceState.DISABLED:
        return
    _release(svc)
    if svc.state == ServiceState.FAILED:
        svc.policy.reset()
    if svc.inst is None and svc.state in (ServiceState.STOPPED, ServiceState.FAILED, ServiceState.BACKOFF):
        svc.backoff_token += 1
        svc.set_state(ServiceState.WAITING, "started by user")
    svc.evaluate()


def stop(svc: Service) -> None:
    """`qasup stop`: stop the run and hold the service until it is started."""
    if svc.state == ServiceState.DISABLED:
        return
    svc.hold = Hold.USER
    svc.backoff_token += 1
    if svc.inst is not None:
        svc.begin_stop(StopReason.USER)
    elif svc.state != ServiceState.STOPPED:
        svc.set_state(ServiceState.STOPPED, "stopped by user")


def restart(svc: Service) -> None:
    """`qasup restart`: stop the run and start again at once (or start now if it is not running)."""
    if svc.state == ServiceState.DISABLED:
        return
    _release(svc)
    if svc.inst is not None:
        if svc.inst.terminating:
            svc.inst.stop_reason = StopReason.RESTART
        else:
            svc.begin_stop(StopReason.RESTART)
        return
    # waiting or in back-off: no second instance, just start now if dependencies allow
    svc.backoff_token += 1
    svc.policy.reset()
    if svc.state != ServiceState.WAITING:
        svc.set_state(ServiceState.WAITING, "restart requested")
    svc.evaluate()


def replace(svc: Service, unit: ResolvedUnit, splan: ServicePlan, restart: bool) -> None:
    """Reload: take the new unit; restart if it changed."""
    was_disabled = svc.state == ServiceState.DISABLED
    svc.take_unit(unit)
    svc.splan = splan
    svc.host.replaced(unit, splan)
    if not splan.enabled:
        if svc.inst is not None:
            svc.begin_stop(StopReason.USER)
        svc.hold = None
        svc.set_state(ServiceState.DISABLED, "disabled by reload")
        return
    if was_disabled:
        svc.set_state(ServiceState.WAITING, "enabled by reload")
    if restart and svc.inst is not None:
        svc.begin_stop(StopReason.RELOAD)
        return
    if restart and svc.hold is Hold.FAILED:
        svc.hold = None
        svc.policy.recent.clear()
    svc.evaluate()
