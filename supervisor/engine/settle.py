"""What the control verbs (start, stop, restart) wait for and refuse, in terms of one service: the engine's
verbs post a request to the service's mailbox, then :func:`settle` until the outcome is known."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from supervisor.engine.errors import Conflict
from supervisor.engine.states import DepVerdict, Hold, ServiceState

if TYPE_CHECKING:
    from supervisor.engine.service import Service

__all__ = ["StopReceipt", "check_control", "refused", "settle", "stopped_by_user", "waits_for_deps"]

S = ServiceState


async def settle(svc: Service, done: Callable[[Service], bool], timeout: float) -> None:
    """Wait (up to ``timeout``) until ``done(svc)`` holds, waking at each of its state changes."""
    with anyio.move_on_after(timeout):
        while not done(svc):
            await svc.changed.wait()


def check_control(svc: Service) -> None:
    """Refuse a verb while the stack shuts down or for a service the plan disabled."""
    if svc.stack.shutting_down:
        raise Conflict("the stack is shutting down")
    if svc.state == S.DISABLED:
        raise Conflict(f"{svc.name} is disabled by the plan ({svc.splan.reason})")


def waits_for_deps(svc: Service) -> bool:
    return svc.state == S.WAITING and svc.stack.deps_verdict(svc.name)[0] is not DepVerdict.GO


def stopped_by_user(svc: Service) -> bool:
    """A stop came in meanwhile: a start or restart waiting for readiness answers at once (refused)."""
    return svc.inst is None and svc.state == S.STOPPED and svc.hold is Hold.USER


class StopReceipt:
    """Handed to the runner with a stop request (``StopRequest(handled=receipt)``), which calls it once it has
    acted on the stop. From then on, a service no longer held by the user was started or restarted after the
    stop: the stop verb answers at once (refused) instead of waiting out its timeout."""

    __slots__ = ("acted",)

    def __init__(self) -> None:
        self.acted = False

    def __call__(self) -> None:
        self.acted = True

    def overtaken(self, svc: Service) -> bool:
        return self.acted and svc.hold is not Hold.USER


def refused(svc: Service, what: str) -> Conflict:
    return Conflict(f"{svc.name}: {what}: state {svc.state}" + (f": {svc.last_error}" if svc.last_error else ""))
