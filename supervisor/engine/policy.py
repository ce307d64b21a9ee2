"""The restart policy: after an exit, restart (after which delay), settle, or give up. Pure: it is handed the
time and the jitter, so its schedules are tested in-process in microseconds."""

from __future__ import annotations

import os
from dataclasses import field

from supervisor.config.spec import RestartSpec
from supervisor.records import dataclass


@dataclass(frozen=True, slots=True)
class Settle:
    """No restart (the policy says so): the service ends ``failed`` or ``stopped``."""

    failed: bool


@dataclass(frozen=True, slots=True)
class GiveUp:
    """``max_restarts`` restarts within ``window``: the service fails; ``abort`` the stack if configured."""

    max_restarts: int
    window: float
    abort: bool


@dataclass(frozen=True, slots=True)
class Restart:
    """Restart after ``delay`` seconds."""

    delay: float


Decision = Settle | GiveUp | Restart


@dataclass
class RestartPolicy:
    """One service's back-off state under its ``[restart]`` table."""

    spec: RestartSpec
    delay: float = field(init=False)                          # the next back-off before jitter
    recent: list[float] = field(init=False, default_factory=list)   # restart times within the window (a list:
    # an empty deque is ~0.7 KiB, held by every service)

    def __post_init__(self) -> None:
        self.delay = self.spec.delay

    def reset(self) -> None:
        """Forget the restart history (a user's start or restart, or a long enough healthy run)."""
        self.delay = self.spec.delay
        self.recent.clear()

    def decide(self, *, now: float, failed: bool, ready_for: float, forced: bool, jitter: float) -> Decision:
        """What to do after an exit at ``now``. ``failed``: the run counts as failed; ``ready_for``: how long it
        had been ready; ``forced``: an ``[[on_log]]`` rule asked for the restart (it happens whatever the
        policy says, and still counts towards ``max_restarts``); ``jitter``: a factor in [0.9, 1.1)."""
        rs = self.spec
        if not forced and (rs.policy == "never" or (rs.policy == "on-failure" and not failed)):
            return Settle(failed)
        if ready_for >= rs.reset_after:
            self.reset()
        recent = self.recent
        old = 0
        while old < len(recent) and now - recent[old] > rs.window:
            old += 1
        del recent[:old]
        if len(self.recent) >= rs.max_restarts:
            return GiveUp(rs.max_restarts, rs.window, rs.on_give_up == "abort")
        self.recent.append(now)
        delay = self.delay * jitter if self.delay > 0 else 0.0
        self.delay = min(self.delay * 2, rs.max_delay) if self.delay > 0 else 0.0
        return Restart(delay)


def jitter() -> float:
    """A factor in [0.9, 1.1) (``random`` would load OpenSSL into every daemon for this)."""
    return 0.9 + 0.2 * int.from_bytes(os.urandom(4), "big") / 2**32
