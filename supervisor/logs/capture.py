"""Capture: one pipe per service for its stdout and stderr, drained to EOF into a list of sinks.

`make_pipe()` gives the child its stdout+stderr; `capture(read_fd, sinks=[...], on_eof=[...])` reads
big chunks (up to 1 MiB, from a pipe enlarged to 1 MiB) and hands each to every sink in order (the
rotating file, the line scanner, the echo stream).  It sleeps in epoll on the pipe while the service is
quiet, so an idle service costs no CPU, and a failing sink is dropped instead of stopping the reader:
a service must never block on a full pipe.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

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
    cap = Capture(read_fd, sinks, on_eof=on_eof, on_sink_error=on_sink_error)
    await cap.pump()
    return cap.total


class Until(Protocol):
    """What `Capture.pump` can stop at besides EOF (`supervisor.proc.flag.Flag`): a one-shot flag whose
    `set()` resolves the futures handed to `add_waiter`."""

    def is_set(self) -> bool: ...
    def add_waiter(self, fut: asyncio.Future[Any]) -> None: ...
    def discard_waiter(self, fut: asyncio.Future[Any]) -> None: ...


def _readable(loop: asyncio.AbstractEventLoop, fd: int, fut: asyncio.Future[bool | None]) -> None:
    loop.remove_reader(fd)   # as anyio.wait_readable: one wake-up per wait, the reader gone before the task runs
    if not fut.done():
        fut.set_result(True)


def _quiet(fut: asyncio.Future[bool | None]) -> None:
    if not fut.done():
        fut.set_result(False)


EOF: Final = "eof"        # `Capture.pump`: the output ended (the fd is closed and `on_eof` ran)
UNTIL: Final = "until"    # `until` was set (the fd stays open)
QUIET: Final = "quiet"    # nothing came for `quiet_after` seconds (the fd stays open)


class Capture:
    """`capture` in steps: `await pump()` reads to EOF; `pump(until)` also returns once `until` is set, and
    `pump(quiet_after=s)` once nothing came for ``s`` seconds. The fd stays open then, and a later `pump()`
    goes on where it stopped: no byte is lost or read twice. `watch(callback)` has the event loop call back when
    there is something to read again (a caller that waits without a task of its own; `unwatch()` undoes it).

    That lets a run's own task read its output while it waits for the main process's exit, and a quiet run
    wait with no task at all (a stack holds hundreds of idle services). At EOF, or when a pump is cancelled or
    fails, the fd is closed and the `on_eof` callbacks run, once; `closed` tells. Asyncio only (qasup runs
    anyio on asyncio).
    """

    __slots__ = ("_fd", "_sinks", "_on_eof", "_on_sink_error", "total", "_watching")

    def __init__(self, read_fd: int, sinks: Sequence[Callable[[bytes], None]], *,
                 on_eof: Sequence[Callable[[], None]] = (),
                 on_sink_error: Callable[[Callable[[bytes], None], Exception], None] | None = None) -> None:
        self._fd = read_fd
        self._sinks = list(sinks)
        self._on_eof = on_eof
        self._on_sink_error = on_sink_error
        self.total = 0
        self._watching = False

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` from the event loop when the pipe is readable (at EOF too); `unwatch()` ends it."""
        assert self._fd >= 0 and not self._watching
        asyncio.get_running_loop().add_reader(self._fd, callback)
        self._watching = True

    def unwatch(self) -> None:
        if self._watching:
            self._watching = False
            asyncio.get_running_loop().remove_reader(self._fd)

    async def pump(self, until: Until | None = None, quiet_after: float | None = None) -> str:
        """Read until EOF (`EOF`), until `until` is set (`UNTIL`) or until nothing came for `quiet_after`
        seconds (`QUIET`); whatever is in the pipe is read first."""
        import anyio.lowlevel

        fd = self._fd
        if fd < 0:
            return EOF
        self.unwatch()
        loop = asyncio.get_running_loop()
        live = self._sinks
        unyielded = 0  # bytes handled since this task last let others run
        quiet = False  # the last wait ended because nothing came
        eof = False
        try:
            while True:
                try:
                    chunk = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    chunk = None   # wait outside the except block: it would keep the exception alive meanwhile
                if chunk is None:
                    if until is not None and until.is_set():
                        return UNTIL
                    if quiet:
                        return QUIET
                    fut: asyncio.Future[bool | None] = loop.create_future()
                    loop.add_reader(fd, _readable, loop, fd, fut)
                    if until is not None:
                        until.add_waiter(fut)   # resolved with None
                    timer = None if quiet_after is None else loop.call_later(quiet_after, _quiet, fut)
                    try:
                        quiet = await fut is False
                    finally:
                        if timer is not None:
                            timer.cancel()
                        if not fut.done():   # cancelled: the reader is still there
                            fut.cancel()
                        if until is not None:
                            until.discard_waiter(fut)
                        loop.remove_reader(fd)
                    unyielded = 0
                    continue
                if not chunk:
                    eof = True
                    return EOF
                quiet = False
                self.total += len(chunk)
                unyielded += len(chunk)
                for sink in tuple(live):
                    try:
                        sink(chunk)
                    except Exception as exc:
                        if self._on_sink_error is None:
                            raise
                        live.remove(sink)
                        self._on_sink_error(sink, exc)
                if unyielded >= _YIELD_EVERY:
                    unyielded = 0
                    await anyio.lowlevel.checkpoint()  # a long burst must not starve other tasks
        except BaseException:
            eof = True   # an error or a cancellation ends the capture, as at EOF
            raise
        finally:
            if eof:
                self._close()

    def close(self) -> None:
        """Stop reading: the fd is closed and the `on_eof` callbacks run (once, whoever calls it first)."""
        self.unwatch()
        self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            os.close(fd)
        finally:
            for callback in self._on_eof:
                callback()
