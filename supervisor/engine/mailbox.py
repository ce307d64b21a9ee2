"""A service's mailbox: its messages in arrival order, read by its runner alone."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import anyio.lowlevel

from supervisor.engine.messages import Message
from supervisor.proc.flag import Flag


class Mailbox:
    """Lighter than a memory object stream (a stack holds one per service): a deque only while messages wait
    (an empty deque is ~0.7 KiB), and a :class:`~supervisor.proc.flag.Flag` only while the runner waits.

    Read by ``await get()`` (a runner task), or delivered by the event loop (:meth:`deliver_to`: no task per
    service): one message per loop callback, in arrival order, other tasks and callbacks running in between."""

    __slots__ = ("_items", "_waiter", "_closed", "_deliver", "_loop", "_scheduled")

    def __init__(self) -> None:
        self._items: deque[Message] | None = None
        self._waiter: Flag | None = None
        self._closed = False
        self._deliver: Callable[[Message], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def put(self, msg: Message) -> None:
        if self._closed:
            return
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(msg)
        if self._deliver is not None:
            if not self._scheduled:
                self._schedule()
        elif self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    async def get(self) -> Message:
        await anyio.lowlevel.checkpoint()   # one message at a time, others run in between
        while not self._items:
            self._waiter = Flag()
            await self._waiter.wait()
        return self._take()

    def _take(self) -> Message:
        items = self._items
        assert items
        msg = items.popleft()
        if not items:
            self._items = None   # idle: no deque held
        return msg

    def get_nowait(self) -> Message | None:
        """The next message, or None when there is none (for a runner driven step by step, as in tests)."""
        return self._take() if self._items else None

    def deliver_to(self, handler: Callable[[Message], None]) -> None:
        """From now on the loop hands each message to ``handler`` (from its own callback, one at a time)."""
        self._deliver = handler
        self._loop = asyncio.get_running_loop()
        if self._items:
            self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._scheduled = True
        self._loop.call_soon(self._deliver_one)

    def _deliver_one(self) -> None:
        self._scheduled = False
        if self._closed or not self._items or self._deliver is None:
            return
        msg = self._take()
        if self._items:
            self._schedule()   # the next one at a later callback: others run in between, as after a checkpoint
        self._deliver(msg)

    def close(self) -> None:
        self._closed = True
        self._items = None
