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
from typing import Final

from .limits import READ_SIZE

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

