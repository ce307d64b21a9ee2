"""The stack's events: every state change, appended to ``events.jsonl`` and sent to live subscribers
(``qasup events``, ``/v1/events``). A subscriber that does not keep up is dropped, never waited for."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from supervisor.engine.statedir import open_private_text

SUBSCRIBER_BUFFER = 1000   # events queued for one subscriber before it is dropped


class EventLog:
    """``events.jsonl`` (opened by :meth:`open`) plus the live subscribers."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None
        self._subscribers: set[MemoryObjectSendStream[dict[str, Any]]] = set()
        self.emitted = 0   # events since the daemon started (qasup_events_total)

    def open(self, path: Path) -> None:
        """Append to ``path`` from now on (line-buffered, mode 0600 whatever the umask); raises OSError."""
        self._file = open_private_text(path)

    def emit(self, event: dict[str, Any]) -> None:
        self.emitted += 1
        if self._file is not None:
            try:
                self._file.write(json.dumps(event) + "\n")
            except (OSError, ValueError):
                pass
        for s in list(self._subscribers):
            try:
                s.send_nowait(event)
            except anyio.WouldBlock:
                s.close()          # a subscriber that does not keep up is dropped
                self._subscribers.discard(s)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._subscribers.discard(s)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        send, recv = anyio.create_memory_object_stream[dict[str, Any]](SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        try:
            async with recv:
                yield recv
        finally:
            self._subscribers.discard(send)
            send.close()

    def close_subscribers(self) -> None:
        for s in list(self._subscribers):
            s.close()

    @property
    def opened(self) -> bool:
        """Whether it appends to a file (its folder was made)."""
        return self._file is not None

    def writes_to(self, path: Path) -> bool:
        """Whether the file at ``path`` is the one this log appends to (not deleted, not replaced)."""
        if self._file is None:
            return False
        try:
            now, ours = os.stat(path), os.fstat(self._file.fileno())
        except (OSError, ValueError):
            return False
        return (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
