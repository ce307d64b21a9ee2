"""Capture: one pipe per service for its stdout and stderr, drained to EOF into a list of sinks.

`make_pipe()` gives the child its stdout+stderr; `capture(read_fd, sinks=[...], on_eof=[...])` reads
big chunks (up to 1 MiB, from a pipe enlarged to 1 MiB) and hands each to every sink in order (the
rotating file, the line scanner, the echo stream).  It sleeps in epoll on the pipe while the service is
quiet, so an idle service costs no CPU, and a failing sink is dropped instead of stopping the reader:
a service must never block on a full pipe.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from .limits import READ_SIZE

if TYPE_CHECKING:
    import asyncio

PIPE_SIZE: Final = 1 << 20          # requested pipe capacity (F_SETPIPE_SZ); failure is ignored
F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_YIELD_EVERY: Final = 4 << 20       # capture lets other tasks run at least this often during a burst


def make_pipe(size: int = PIPE_SIZE) -> tuple[int, int]:
    """A pipe for one service's stdout and stderr: (read_fd, write_fd), both close-on-exec.

    The read end is non-blocking (for `capture`); the write end stays blocking, as a child's stdout
    should be (dup2 onto 1 and 2 clears close-on-exec for the child).  The capacity is raised to
    `size` where the kernel allows it, so a burst does not stall the writer between two reads.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, size)
    except OSError:
        pass  # EPERM above /proc/sys/fs/pipe-max-size, or not Linux: the default 64 KiB works too
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


async def capture(
    read_fd: int,
    sinks: Sequence[Callable[[bytes], None]],
    *,
    on_eof: Sequence[Callable[[], None]] = (),
    on_sink_error: Callable[[Callable[[bytes], None], Exception], None] | None = None,
) -> int:
    """Read `read_fd` until EOF, handing every chunk to each sink in order; returns the bytes read.

    EOF comes once every writer (the service and any child that inherited its stdout) has closed
    the pipe, so awaiting this before reporting an exit loses no last lines.  The fd must be
    non-blocking (see `make_pipe`); it is closed on return, on error and on cancellation.  Then
    `on_eof` callbacks run (e.g. `LineScanner.flush`, `EchoStream.flush`), also when cancelled.
    A sink that raises is dropped and reported to `on_sink_error` so the pipe keeps being drained
    (a service must never block on a full pipe); without `on_sink_error` the exception propagates.
    """
    import anyio
    import anyio.lowlevel

    live = list(sinks)
    total = 0
    unyielded = 0  # bytes handled since this task last let others run
    try:
        while True:
            try:
                chunk = os.read(read_fd, READ_SIZE)
            except BlockingIOError:
                chunk = None   # wait outside the except block: it would keep the exception alive meanwhile
            if chunk is None:
                await anyio.wait_readable(read_fd)
                unyielded = 0
                continue
            if not chunk:
                break
            total += len(chunk)
            unyielded += len(chunk)
            for sink in tuple(live):
                try:
                    sink(chunk)
                except Exception as exc:
                    if on_sink_error is None:
                        raise
                    live.remove(sink)
                    on_sink_error(sink, exc)
            if unyielded >= _YIELD_EVERY:
                unyielded = 0
                await anyio.lowlevel.checkpoint()  # a long burst must not starve other tasks
    finally:
        os.close(read_fd)
        for callback in on_eof:
            callback()
    return total



class PipeReader:
    """`capture` without a task: the event loop calls back when the pipe is readable (a stack of hundreds of
    quiet services holds no task, frame or cancel scope per pipe, only a loop reader).

    `start()` registers it; each callback reads what is there (up to `_YIELD_EVERY` bytes, then lets other
    callbacks run) and hands every chunk to each sink in order, as `capture` does. At EOF, or at `close()`
    (the run is over or cancelled), the reader is removed, the fd closed and the `on_eof` callbacks run, once.
    A sink that raises is dropped and reported to `on_sink_error`. Asyncio only (qasup runs anyio on asyncio).
    """

    __slots__ = ("_fd", "_sinks", "_on_eof", "_on_sink_error", "_loop", "total")

    def __init__(self, read_fd: int, sinks: Sequence[Callable[[bytes], None]], *,
                 on_eof: Sequence[Callable[[], None]] = (),
                 on_sink_error: Callable[[Callable[[bytes], None], Exception], None]) -> None:
        self._fd = read_fd
        self._sinks = list(sinks)
        self._on_eof = on_eof
        self._on_sink_error = on_sink_error
        self._loop: asyncio.AbstractEventLoop | None = None
        self.total = 0

    def start(self) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)
        # whatever is already in the pipe is read at the loop's next poll, as capture's first read would

    def _readable(self) -> None:
        handled = 0
        fd = self._fd
        while handled < _YIELD_EVERY:
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:   # EIO and the like (never seen on a pipe): as the end of the output
                chunk = b""
            if not chunk:
                self.close()
                return
            handled += len(chunk)
            self.total += len(chunk)
            for sink in tuple(self._sinks):
                try:
                    sink(chunk)
                except Exception as exc:
                    self._sinks.remove(sink)
                    self._on_sink_error(sink, exc)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Stop reading (EOF, or the run is over): the fd is closed and the `on_eof` callbacks run, once."""
        fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        try:
            if self._loop is not None:
                self._loop.remove_reader(fd)
        finally:
            os.close(fd)
            for callback in self._on_eof:
                callback()
