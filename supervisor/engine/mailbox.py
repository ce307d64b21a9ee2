"""A service's mailbox: its messages in arrival order, read by its runner alone."""

from __future__ import annotations

from collections import deque

import anyio
import anyio.lowlevel

from supervisor.engine.messages import Message


class Mailbox:
    """Lighter than a memory object stream (a stack holds one per service): a deque and an event made only
    while the runner waits."""

    __slots__ = ("_items", "_waiter", "_closed")

    def __init__(self) -> None:
        self._items: deque[Message] = deque()
        self._waiter: anyio.Event | None = None
        self._closed = False

    def put(self, msg: Message) -> None:
        if self._closed:
            return
        self._items.append(msg)
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    async def get(self) -> Message:
        await anyio.lowlevel.checkpoint()   # one message at a time, others run in between
        while not self._items:
            self._waiter = anyio.Event()
            await self._waiter.wait()
        return self._items.popleft()

    def get_nowait(self) -> Message | None:
        """The next message, or None when there is none (for a runner driven step by step, as in tests)."""
        return self._items.popleft() if self._items else None

    def close(self) -> None:
        self._closed = True
        self._items.clear()
