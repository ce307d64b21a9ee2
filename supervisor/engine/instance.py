"""One run of a service's process, and the two small protocols the service's state machine talks through: the
I/O of its runs (:class:`ServiceHost`) and the stack it belongs to (:class:`StackView`). The real host is :class:`supervisor.engine.host.ProcessHost`;
tests drive the state machine with a fake one, a fake clock and no processes at all."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from supervisor.engine.states import DepVerdict, Hold, ServiceState, StopReason
from supervisor.records import dataclass

if TYPE_CHECKING:
    import anyio.abc

    from supervisor.plan.resolve import ResolvedUnit
    from supervisor.plan.result import ServicePlan


@dataclass(eq=False, slots=True)
class Instance:
    """One run of a service (prepare, spawn, readiness, exit), as the state machine sees it.

    The host writes ``pid`` and ``spawned_at`` when the process is spawned (before it posts ``Spawned``), writes
    ``pid`` again when a forking service's daemon takes over (and posts ``Spawned`` again), and clears it before
    ``Exited`` when the run never had a main process of its own (a failed start: a simple service that
    daemonized, a forking launcher that failed or left no daemon to follow); the state machine owns the rest."""

    number: int
    pid: int | None = None
    spawned_at: float | None = None
    ready_at: float | None = None
    stop_reason: StopReason | None = None
    failure: str | None = None          # why this run counts as failed
    terminating: bool = False


class ServiceHost(Protocol):
    """The I/O of one service's runs. Every method returns at once; outcomes come back as messages
    (``Resolved``, ``Spawned``, ``Ready``, ``ReadyTimeout``, ``RuleHit``, ``LiveFailed``, ``LiveRecovered``,
    ``Exited``, ``BackoffDone``)."""

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        """The runner's task group, in which the host runs its tasks (for the runner's lifetime)."""

    def launch(self, inst: Instance) -> None:
        """Start a run: resolve again, prepare, spawn, capture, probe readiness; ``Exited`` ends it."""

    def stop(self, inst: Instance, timeout: float) -> None:
        """Stop the run: cancel its prepare step, or signal its processes and SIGKILL them after ``timeout``."""

    def kill(self, inst: Instance) -> None:
        """SIGKILL every process of the run now (or cancel its prepare step)."""

    def start_timer(self, token: int, delay: float) -> None:
        """Post ``BackoffDone(token)`` after ``delay`` seconds."""

    def live_pid(self, inst: Instance) -> int | None:
        """The run's main process id (a forking service's daemon, once known) while it has not exited."""

    def log_line(self, text: str) -> None:
        """A line of qasup's own about the service (a rule report): recorded in the events, never written
        into the service's log file (that holds the service's bytes only)."""

    def replaced(self, unit: ResolvedUnit, splan: ServicePlan) -> None:
        """Reload gave the service a new unit (its patterns and log file may have changed)."""

    def close(self) -> None:
        """The stack has stopped: release files."""


class Neighbour(Protocol):
    """What a service sees of another (and what the stack records of one)."""

    name: str
    state: ServiceState
    hold: Hold | None
    inst: Instance | None


class StackView(Protocol):
    """What a service asks of the stack it belongs to (the engine)."""

    shutting_down: bool
    clock: Callable[[], float]
    jitter: Callable[[], float]

    def requires(self, name: str) -> Iterable[str]: ...
    def restart_with(self, name: str) -> Iterable[str]: ...
    def service(self, name: str) -> Neighbour: ...
    def deps_verdict(self, name: str) -> tuple[DepVerdict, str]: ...
    def note_forced(self, name: str) -> None: ...
    def dependents_running(self, name: str) -> bool: ...
    def budget_left(self) -> float: ...
    def record(self, svc: Neighbour, prev: str, message: str | None) -> None: ...
    def poke_neighbours(self, name: str) -> None: ...
    def say(self, text: str) -> None: ...
    def abort(self, reason: str) -> None: ...
