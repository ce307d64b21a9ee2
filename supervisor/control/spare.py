"""What the control API frees when the daemon is out of file descriptors (EMFILE/ENFILE at ``accept()``).

The socket of PID 1 must answer exactly when things go wrong, and running out of descriptors is one of those
times: a crowd of clients that connect and say nothing, or services whose pipes and log files use up a low
``ulimit -n``. Waiting for a descriptor to come free (what the accept loops did) leaves every client unanswered
meanwhile; so when ``accept()`` fails for want of one, :meth:`Spare.make_room` frees one the API can spare:

1. the oldest *idle* connection (of every listener: the descriptors are the process's) is closed: one that is
   connected without a whole request yet, or an idle keep-alive. A connection with a request in flight or a
   streamed answer (``logs -f``, events) is never idle here. One shed before its first answer gets the raw 503
   (busy) first, as over the connection cap, so a client that was only slow tries again; then the pending
   connection is accepted and served as any other.
2. with none idle, the reserve descriptor (an open ``/dev/null`` held from the start) is closed, the pending
   connection accepted on it, answered 503 at once with the usual JSON error body (``qasup`` tries a 503 again
   for 2 s) and closed, and the reserve opened again.
3. with neither (the reserve could not be opened again: something else took that descriptor), the accept loop
   backs off as before (50 ms doubling to 1 s); the reserve is opened again at the next accept or failure.

``accept()`` fails with EMFILE with no client waiting too (the descriptor is taken first), so the accept loop
frees one only once the listener is readable (a client is there) and accept() failed again; until then it
sleeps in the event loop, with no wake-ups. Each step closes or answers one connection, so none repeats
without progress: no busy loop while descriptors stay exhausted. Nothing here grows: the idle set holds at most
the connections the servers admit.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from types import TracebackType

import anyio
import anyio.lowlevel

from supervisor.control.http import busy_response
from supervisor.control.refusals import Refusals
from supervisor.proc.kernel import out_of_fds_text

__all__ = ["Idle", "Spare"]

_SHED_WAIT = 1.0   # at most this long for a shed connection's task to close its socket
_SAY_EVERY = 10.0  # seconds between two log lines of one kind
_REASONS = {"shed": "idle_shed", "reserve": "out_of_fds_reserve", "request": "out_of_fds_request"}


class Idle:
    """One connection's standing: while inside ``with idle:`` (waiting for a request) it may be shed, which
    cancels the block; ``shed`` then says so, and ``farewell`` is the 503 to write before closing it (b"" once
    a request of it was ``answered``: closing an idle keep-alive needs no word)."""

    __slots__ = ("_gone", "_scope", "_spare", "answered", "farewell", "shed")

    def __init__(self, spare: Spare) -> None:
        self._spare = spare
        self._scope: anyio.CancelScope | None = None
        self._gone: anyio.Event | None = None
        self.shed = False
        self.answered = False
        self.farewell = b""

    def __enter__(self) -> Idle:
        self._scope = anyio.CancelScope().__enter__()
        self._spare._idle[self] = None   # re-entered (keep-alive): the youngest again
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self._spare._idle.pop(self, None)
        scope, self._scope = self._scope, None
        assert scope is not None
        return bool(scope.__exit__(typ, exc, tb))

    def closed(self) -> None:
        """Its socket is closed (the connection's task calls this last)."""
        self._spare._idle.pop(self, None)
        if self._gone is not None:
            self._gone.set()

    def _shed(self, why: str) -> anyio.Event:
        self.shed = True
        if not self.answered:
            self.farewell = busy_response(f"the qasup daemon is {why}: closed this idle connection; try again")
        self._gone = anyio.Event()
        if self._scope is not None:
            self._scope.cancel()
        return self._gone


class Spare:
    """The reserve descriptor and the idle connections of the daemon's API servers."""

    def __init__(self, log: Callable[[str], None], refusals: Refusals | None = None) -> None:
        self.log = log
        self.refusals = refusals if refusals is not None else Refusals()
        self._reserve = -1
        self._idle: dict[Idle, None] = {}   # insertion order: the longest idle first
        self._said = {"shed": 0.0, "reserve": 0.0, "request": 0.0}
        self.fill()

    def connection(self) -> Idle:
        return Idle(self)

    def fill(self) -> bool:
        """Open the reserve descriptor unless it is open; whether it is."""
        if self._reserve < 0:
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def close(self) -> None:
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1

    async def make_room(self, listener: socket.socket, exc: BaseException) -> bool:
        """``accept()`` on ``listener`` failed with EMFILE/ENFILE ``exc``: shed the oldest idle connection, or
        else answer the pending one 503 on the reserve. Whether to accept again at once (False: nothing could
        be freed, back off)."""
        why = out_of_fds_text(_os_error(exc))
        try:
            if await self._shed_oldest(why):
                self.say("shed", f"api: {why}: closed the longest idle connection to accept a new one")
                return True
            if self._answer_on_reserve(listener, why):
                self.say("reserve", f"api: {why}: answered a new connection 503 (busy) on the reserve descriptor")
                return True
        except Exception as bug:  # noqa: BLE001 - a bug here must cost one accept, never the accept loop
            self.log(f"api: internal error freeing a descriptor: {type(bug).__name__}: {bug}")
        return False

    async def _shed_oldest(self, why: str) -> bool:
        idle = next(iter(self._idle), None)
        if idle is None:
            return False
        del self._idle[idle]
        gone = idle._shed(why)
        with anyio.move_on_after(_SHED_WAIT):
            await gone.wait()
        await anyio.lowlevel.checkpoint()   # a transport's socket is closed one turn of the loop later
        return True

    def _answer_on_reserve(self, listener: socket.socket, why: str) -> bool:
        if not self.fill():
            return False
        os.close(self._reserve)
        self._reserve = -1
        try:
            conn, _ = listener.accept()
        except BlockingIOError:   # the client gave up meanwhile: nothing pending, accept() waits again
            self.fill()
            return True
        except OSError:           # the descriptor went elsewhere (another thread): nothing was freed
            self.fill()
            return False
        try:
            conn.setblocking(False)
            try:
                conn.recv(65536)   # what the request sent already: read, so closing does not reset it
            except OSError:
                pass
            conn.send(busy_response(f"the qasup daemon is {why}; try again"))
        except OSError:
            pass
        finally:
            conn.close()
        self.fill()
        return True

    def say(self, kind: str, message: str) -> None:
        """Count ``kind`` (shed, reserve, request) and log ``message``, the first and then at most every 10 s."""
        reason = _REASONS[kind]
        self.refusals.add(reason)
        now = time.monotonic()
        if now - self._said[kind] >= _SAY_EVERY:
            self._said[kind] = now
            self.log(f"{message} ({self.refusals.counts[reason]} so far; said at most every {_SAY_EVERY:g}s)")


def _os_error(exc: BaseException) -> BaseException:
    """The OSError behind ``exc`` (anyio wraps it in a BrokenResourceError), else ``exc``."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None or isinstance(seen, OSError):
            break
        seen = seen.__cause__ or seen.__context__
    return seen if isinstance(seen, OSError) else exc
