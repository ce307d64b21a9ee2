"""``SpawnGate``: how many runs may be between their launch and their spawn at once; the others wait as a
callback in a queue, not as a task.

A stack of hundreds of services launches them all in the same moment, and the spawns go through a few worker
threads (``Reaper.spawn_async``) anyway. Had each run its task at once, hundreds of tasks would wait there, each
with its frames, cancel scopes and a copy of its environment: several MiB held for a moment, and kept by the
daemon afterwards (freed Python memory is given back to the system only in whole arenas). A run waiting here
costs a queue entry; its task starts when a run ahead of it has spawned (or failed to). The order is kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from supervisor.proc.reaper import SPAWN_THREADS

__all__ = ["SpawnGate"]


class SpawnGate:
    """``enter(start)`` calls ``start`` now, or once a slot is free (first come, first served); each ``start``
    called must be followed by one ``leave()``, when that run has spawned, failed, or stopped before it."""

    __slots__ = ("limit", "active", "waiting")

    def __init__(self, limit: int = 2 * SPAWN_THREADS) -> None:
        self.limit = limit     # the spawn threads kept busy, with the next runs ready behind them
        self.active = 0
        self.waiting: deque[Callable[[], object]] = deque()

    def enter(self, start: Callable[[], object]) -> None:
        if self.active < self.limit:
            self.active += 1
            try:
                start()
            except BaseException:
                self.active -= 1
                raise
        else:
            self.waiting.append(start)

    def withdraw(self, start: Callable[[], object]) -> bool:
        """Take ``start`` out of the queue (a run stopped before its turn): whether it was still there."""
        try:
            self.waiting.remove(start)
        except ValueError:
            return False
        return True

    def leave(self) -> None:
        while self.waiting:   # the slot passes to the next run
            start = self.waiting.popleft()
            try:
                start()
                return
            except RuntimeError:   # its task group is gone (the engine was cancelled): the next one
                continue
        self.active -= 1
