"""Byte budgets for the streamed answers (``GET /v1/services/NAME/logs?follow=1``, ``GET /v1/events``).

A streamed answer is fed by a producer that must never wait for the client (the log follower, the event
log) and drained by a pump that writes to the client's socket. What is queued between them, produced but
not yet written, is bounded twice: by a small fixed budget per stream (:attr:`Limits.stream_buffer_bytes
<supervisor.control.http.Limits>`, 256 KiB) and by a cap on what all streams hold together
(:class:`StreamPool`, 8 MiB). A reader that falls behind does not grow the daemon: it *skips ahead*. What
does not fit is dropped and counted, and once the reader has caught up again (the stream's queue is at most
half full) a marker line saying how much was skipped is queued before the next data (at once, when the skip
ended at a line end; else with the next line). Skipping keeps whole lines: the stream resumes at a line
start (unless a single line runs past the budget), and the marker is a line of its own. A chunk is always taken whole when nothing is queued, so one read of the log (up to 1 MiB)
or the last lines a client asked for (up to 8 MiB) never count as falling behind, as long as the pool has
room for them.

Standard library only (plus anyio for the wake-up); no HTTP here: the routes own the marker texts and the
pump that writes with the connection's send time-out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["StreamBuffer", "StreamPool"]

_MARKER_ROOM = 256  # bytes a marker line may take


class StreamPool:
    """What every stream buffer of one server holds, together, against one cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held = 0

    def room(self, size: int) -> bool:
        """Whether ``size`` more bytes stay within the cap."""
        return self.held + size <= self.cap


class StreamBuffer:
    """The bytes queued for one streamed answer; :meth:`put` never blocks, :meth:`take` waits for data.

    ``marker(skipped_bytes, skipped_pieces)`` makes the line (ending in ``\\n``) queued where data was
    skipped; a piece is one :meth:`put` (one event, for ``/v1/events``)."""

    def __init__(self, pool: StreamPool, budget: int, marker: Callable[[int, int], bytes]) -> None:
        self.pool = pool
        self.budget = budget
        self.marker = marker
        self.held = 0  # queued plus taken-but-not-yet-released, in bytes
        self.skipped_total = 0
        self._queue: deque[bytes] = deque()
        self._offset = 0  # into _queue[0]
        self._closed = False
        self._finishing = False
        self._wakeup = anyio.Event()
        self._at_line_start = True  # the last byte queued ends a line
        self._behind = False  # skipping; a marker is owed before the next data
        self._skipped_bytes = 0
        self._skipped_pieces = 0
        self._mid_line = False  # the skipped bytes end inside a line
        self._skipped_in_line = 0  # skipped bytes since the last line end

    # ----------------------------------------------------------------- producer side

    def put(self, data: bytes) -> None:
        """Queue ``data``, or skip it (counted) if the stream or the pool is over its budget."""
        if self._closed or self._finishing or not data:
            return
        if not self._behind:
            if self._fits(len(data)):
                self._enqueue(data)
            else:
                self._skip(data, whole=True)
            return
        head, rest = b"", data
        if self._mid_line:  # resume at the start of the next line (or give up on a line over the budget)
            end = data.find(b"\n")
            if end < 0 and self._skipped_in_line < self.budget:
                self._skip(data, whole=True)
                return
            head, rest = data[: end + 1], data[end + 1:]
        if self.held > self.budget // 2 or not self._fits(len(rest) + _MARKER_ROOM):
            self._skip(data, whole=True)
            return
        if head:
            self._skip(head, whole=False)
        self._queue_marker()
        if rest:
            self._enqueue(rest)

    def _fits(self, size: int) -> bool:
        """Within this stream's budget (anything fits an empty stream) and within the pool's cap."""
        return (self.held == 0 or self.held + size <= self.budget) and self.pool.room(size)

    def finish(self) -> None:
        """No more data will come: :meth:`take` returns what is queued, then b""."""
        self._finishing = True
        self._wakeup.set()

    def close(self) -> None:
        """Drop what is queued and give its bytes back to the pool; :meth:`take` returns b"" from now on."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._offset = 0
        self.pool.held -= self.held
        self.held = 0
        self._wakeup.set()

    def _skip(self, data: bytes, *, whole: bool) -> None:
        if not self._behind:
            self._behind = True
            self._skipped_bytes = self._skipped_pieces = 0
        self._skipped_bytes += len(data)
        self.skipped_total += len(data)
        if whole:
            self._skipped_pieces += 1
        end = data.rfind(b"\n")
        if end < 0:
            self._skipped_in_line += len(data)
        else:
            self._skipped_in_line = len(data) - end - 1
        self._mid_line = self._skipped_in_line > 0

    def _queue_marker(self) -> None:
        line = self.marker(self._skipped_bytes, self._skipped_pieces)
        if not self._at_line_start:
            line = b"\n" + line
        self._behind = False
        self._mid_line = False
        self._skipped_bytes = self._skipped_pieces = self._skipped_in_line = 0
        self._enqueue(line)

    def _enqueue(self, data: bytes) -> None:
        self._queue.append(data)
        self.held += len(data)
        self.pool.held += len(data)
        self._at_line_start = data.endswith(b"\n")
        self._wakeup.set()

    # ----------------------------------------------------------------- pump side

    async def take(self, limit: int) -> bytes:
        """The next queued bytes (at most ``limit``), waiting for some; b"" once finished and empty, or
        closed. The bytes stay counted until :meth:`release`."""
        while not self._queue:
            if self._closed or self._finishing:
                return b""
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        head = self._queue[0]
        piece = head[self._offset: self._offset + limit]
        self._offset += len(piece)
        if self._offset >= len(head):
            self._queue.popleft()
            self._offset = 0
        return piece

    def release(self, size: int) -> None:
        """``size`` bytes from :meth:`take` have been written to the client."""
        if self._closed:
            return
        self.held -= size
        self.pool.held -= size
        # Caught up at a line end: say what was skipped now, not only when the producer next speaks.
        if self._behind and not self._mid_line and self.held <= self.budget // 2 and self.pool.room(_MARKER_ROOM):
            self._queue_marker()
