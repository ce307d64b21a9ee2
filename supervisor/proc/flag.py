"""``Flag``: a one-shot event, lighter than ``anyio.Event`` (a stack holds several per service).

``anyio.Event`` on asyncio is an ``asyncio.Event`` with a waiter deque (about 0.9 KiB each, made at once);
a ``Flag`` is two slots, and a future only while someone waits. Same use: ``set()``, ``is_set()``,
``await wait()`` (a checkpoint when already set; cancelled like any await by anyio's cancel scopes).
It belongs to the event loop's thread, as ``anyio.Event`` does.
"""

from __future__ import annotations

import asyncio

import anyio.lowlevel

__all__ = ["Flag"]


class Flag:
    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: asyncio.Future[None] | list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        if waiters is None:
            return
        for fut in waiters if isinstance(waiters, list) else (waiters,):
            if not fut.done():
                fut.set_result(None)

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.add_waiter(fut)
        try:
            await fut
        finally:
            self.discard_waiter(fut)

    def add_waiter(self, fut: asyncio.Future[None]) -> None:
        """Resolve ``fut`` at ``set()`` (at once when set already): for a wait on this or something else,
        such as a pipe (``logs.capture.Capture.pump``). ``discard_waiter`` once done with it."""
        if self._set:
            if not fut.done():
                fut.set_result(None)
            return
        waiters = self._waiters
        if waiters is None:
            self._waiters = fut
        elif isinstance(waiters, list):
            waiters.append(fut)
        else:
            self._waiters = [waiters, fut]

    def discard_waiter(self, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters
        if waiters is fut:
            self._waiters = None
        elif isinstance(waiters, list) and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                self._waiters = None
