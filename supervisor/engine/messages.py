"""The messages of a service's mailbox: one frozen dataclass per kind, handled one at a time by its runner
(:meth:`supervisor.engine.service.Service.handle` dispatches on them with ``match``).

Messages about one run of the process carry its :class:`Instance`; the runner drops those of an earlier run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.records import dataclass

if TYPE_CHECKING:
    from collections.abc import Callable

    from supervisor.engine.instance import Instance
    from supervisor.plan.resolve import ResolvedUnit
    from supervisor.plan.result import ServicePlan


class Message:
    """Base of every mailbox message."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, eq=False)
class InstanceMessage(Message):
    """A message about one run of the service's process."""

    inst: Instance


# ---------------------------------------------------------------- from a run of the process (the host)

@dataclass(frozen=True, slots=True, eq=False)
class Resolved(InstanceMessage):
    """The unit was resolved again for this run (env files are read at each start)."""

    unit: ResolvedUnit


@dataclass(frozen=True, slots=True, eq=False)
class Spawned(InstanceMessage):
    """The process runs (``inst.pid`` is set)."""


@dataclass(frozen=True, slots=True, eq=False)
class Ready(InstanceMessage):
    """Its readiness checks passed."""


@dataclass(frozen=True, slots=True, eq=False)
class ReadyTimeout(InstanceMessage):
    """``[ready] timeout`` passed first; ``why`` says which check is still failing."""

    why: str


@dataclass(frozen=True, slots=True, eq=False)
class LiveFailed(InstanceMessage):
    """``[live]``: ``failures`` rounds of checks in a row failed (``why``: the last round's reason). Sent at the
    threshold and at every failed round after it."""

    failures: int
    why: str


@dataclass(frozen=True, slots=True, eq=False)
class LiveRecovered(InstanceMessage):
    """``[live]``: a round passed after at least one ``LiveFailed``."""


@dataclass(frozen=True, slots=True, eq=False)
class RuleHit(InstanceMessage):
    """An output line matched ``[[on_log]]`` rule number ``rule`` (``before``: the lines before it)."""

    rule: int
    line: bytes
    before: list[bytes]


@dataclass(frozen=True, slots=True, eq=False)
class Exited(InstanceMessage):
    """The run is over: the process exited (``code``) or never started (``failure``), its output was read to
    the end, and none of its processes remain."""

    code: int | None
    failure: str | None


# ---------------------------------------------------------------- from the engine and its timers

@dataclass(frozen=True, slots=True, eq=False)
class Poke(Message):
    """Something changed around the service (a neighbour's state): evaluate again."""


@dataclass(frozen=True, slots=True, eq=False)
class BackoffDone(Message):
    """The back-off delay numbered ``token`` has passed (stale if the service moved on meanwhile)."""

    token: int


@dataclass(frozen=True, slots=True, eq=False)
class Shutdown(Message):
    """The stack is stopping."""


@dataclass(frozen=True, slots=True, eq=False)
class Replace(Message):
    """Reload: the service's new unit and plan; ``restart`` when what it runs changed."""

    unit: ResolvedUnit
    splan: ServicePlan
    restart: bool


@dataclass(frozen=True, slots=True, eq=False)
class Remove(Message):
    """Reload: the unit is gone; stop and end the runner."""


# ---------------------------------------------------------------- requests of a user

@dataclass(frozen=True, slots=True, eq=False)
class StartRequest(Message):
    pass


@dataclass(frozen=True, slots=True, eq=False)
class StopRequest(Message):
    """``handled``: called by the runner once it has acted on this stop (the verb then knows that a start or
    restart which clears the hold came after it)."""

    handled: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class RestartRequest(Message):
    pass
