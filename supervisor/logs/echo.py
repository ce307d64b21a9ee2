"""Echo every service's output on qasup's stdout as `name | line`, without ever blocking a service.

`Echo` is the one writer (a thread) shared by all services; `EchoStream` is one service's side of it,
turning raw chunks into whole prefixed lines.  A slow or absent reader of stdout costs dropped lines
(counted and announced), never a stalled event loop.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Final

from .limits import MAX_LINE, READ_SIZE

_NL: Final = b"\n"


class Echo:
    """Prints every service's output on qasup's stdout as `name | line`, without ever blocking.

    One writer thread (started on first use, asleep while the queue is empty) writes whole
    prefixed lines queued by `EchoStream`s, so lines of two services never interleave.  When the
    queue is full (stdout is slow or nobody reads it) new lines are dropped and counted per service;
    the writer then prints `[qasup] echo dropped N lines of NAME` once it catches up (or after a
    second of overload).  `dropped` holds the totals.  If stdout breaks (EPIPE), echo stops for good.

    The event loop's side (`offer`) takes no lock the writer could hold: the queue is a deque (append
    and popleft are atomic), each counter has one writer, and the writer sleeps on an eventfd.  A lock
    shared with the writer thread would stall the loop whenever the OS preempted the writer while it
    held that lock, which on a busy machine is milliseconds of lost readiness latency.
    """

    def __init__(self, fd: int = 1, queue_chunks: int = 1024, queue_bytes: int = 8 << 20) -> None:
        self._fd = fd
        self._max_chunks = max(1, queue_chunks)
        self._max_bytes = max(1, queue_bytes)
        self._items: deque[bytes] = deque()
        self._offered_bytes = 0                # written by offer() only
        self._written_bytes = 0                # written by the writer thread only
        self.dropped: dict[str, int] = {}      # all drops, per service (offer() only)
        self._dropped_lines = 0                # their sum (offer() only)
        self._closing = False
        self._broken = False                   # set by the writer thread only
        self._wake = -1
        self._thread: threading.Thread | None = None

    def line_writer(self, name: str, max_line: int = MAX_LINE) -> EchoStream:
        return EchoStream(self, name, max_line)

    def offer(self, name: str, data: bytes, lines: int) -> bool:
        """Queue whole prefixed lines; False (and counted) when they had to be dropped."""
        items = self._items
        if self._closing or self._broken or (
                items and (len(items) >= self._max_chunks
                           or self._offered_bytes - self._written_bytes + len(data) > self._max_bytes)):
            self.dropped[name] = self.dropped.get(name, 0) + lines
            self._dropped_lines += lines
            return False
        items.append(data)
        self._offered_bytes += len(data)
        if self._thread is None:
            self._wake = os.eventfd(0, os.EFD_CLOEXEC)
            self._thread = threading.Thread(target=self._run, name="qasup-echo", daemon=True)
            self._thread.start()
        elif len(items) == 1:   # the queue was empty: the writer may be asleep
            os.eventfd_write(self._wake, 1)
        return True

    def _run(self) -> None:
        items = self._items
        announced: dict[str, int] = {}
        announced_lines = 0
        overload_since = 0.0
        while True:
            batch = []
            size = 0
            while items and size < READ_SIZE:
                data = items.popleft()
                batch.append(data)
                size += len(data)
            if batch:
                if not self._write(b"".join(batch) if len(batch) > 1 else batch[0]):
                    return
                self._written_bytes += size
            # announce drops after the lines queued before them, or after a second of overload
            if self._dropped_lines != announced_lines:
                now = time.monotonic()
                if not overload_since:
                    overload_since = now
                if not items or now - overload_since > 1.0:
                    totals = self.dropped.copy()   # one C call: atomic under the GIL
                    notices = b"".join(
                        f"[qasup] echo dropped {count - announced.get(name, 0)} lines of {name}\n".encode()
                        for name, count in totals.items() if count > announced.get(name, 0))
                    announced, announced_lines, overload_since = totals, sum(totals.values()), 0.0
                    if notices and not self._write(notices):
                        return
            if items:
                continue
            if self._closing:
                return
            os.eventfd_read(self._wake)   # until offer() or close() wakes it

    def _write(self, data: bytes) -> bool:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            self._broken = True
            self._items.clear()
            return False
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most `timeout` s for a stalled stdout) and stop."""
        self._closing = True
        thread = self._thread
        if thread is None:
            return
        os.eventfd_write(self._wake, 1)
        thread.join(timeout)
        if not thread.is_alive():
            os.close(self._wake)


class EchoStream:
    """One service's side of `Echo`: turns raw chunks into whole `name | ` prefixed lines."""

    def __init__(self, echo: Echo, name: str, max_line: int = MAX_LINE) -> None:
        self._echo = echo
        self.name = name
        self._prefix = name.encode("utf-8", "replace") + b" | "
        self._separator = _NL + self._prefix
        self._partial = bytearray()
        self._max_line = max_line

    def write(self, chunk: bytes) -> None:
        nl = chunk.rfind(_NL)
        if nl < 0:
            self._partial += chunk
            if len(self._partial) >= self._max_line:
                self.flush()  # shown as a line of its own; the log file keeps it whole
            return
        if self._partial:
            self._partial += memoryview(chunk)[:nl]
            body = bytes(self._partial)
            self._partial.clear()
        else:
            body = chunk[:nl]
        if nl + 1 < len(chunk):
            self._partial += memoryview(chunk)[nl + 1:]
        lines = body.count(_NL) + 1
        self._echo.offer(self.name, self._prefix + body.replace(_NL, self._separator) + _NL, lines)
        if len(self._partial) >= self._max_line:
            self.flush()

    def flush(self) -> None:
        """At EOF: show an unterminated last line."""
        if self._partial:
            body = bytes(self._partial)
            self._partial.clear()
            self._echo.offer(self.name, self._prefix + body + _NL, 1)
