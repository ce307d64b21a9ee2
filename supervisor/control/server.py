"""The control API server that runs inside ``qasup up``: :func:`serve`, its accept loops, the connection cap
and the per-connection request loop.

HTTP/1.1 with JSON bodies, parsed by h11 (no hand-written HTTP parsing), served with anyio on a
Unix socket (mode 0600) and optionally on a TCP listener that requires a bearer token.  The
server never trusts its clients: every request is bounded in header size, body size and time,
the number of connections is capped, service names are validated before they reach the
controller, and no request can stop the daemon except ``POST /v1/shutdown``.  A malformed
request costs one log line and a 4xx answer, never a crash; running out of file descriptors costs the
longest idle connection or a 503, never silence (:mod:`supervisor.control.spare`).

The rooms: ``listen`` sets up the sockets, ``http`` reads and writes one connection, ``routes`` holds the
endpoints (see ``/work/shared/spec/interface.md``, "Control API"), ``controller`` the protocol the engine
offers and the mapping of its refusals to HTTP statuses.

``wait-ready`` is done client side by polling ``/v1/status`` (see ``supervisor.cli.control_verbs``): it needs no
extra endpoint, holds no connection slot while waiting, and the status JSON is cheap to build.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import field
from pathlib import Path

import anyio
import anyio.abc
import h11

from supervisor.control.controller import Controller
from supervisor.control.http import BUSY_RESPONSE, Channel, Limits, Reject, client_went_away
from supervisor.control.listen import (
    SOCKET_CHECK_EVERY,
    BoundSockets,
    DaemonAlreadyRunning,
    ListenError,
    bind_api,
    bind_unix_socket,
    remove_our_socket,
)
from supervisor.control.metrics import Observed
from supervisor.control.readonly import ReadOnlyRoutes
from supervisor.control.refusals import Refusals
from supervisor.control.routes import Routes
from supervisor.control.spare import Idle, Spare
from supervisor.proc.kernel import out_of_fds, out_of_fds_text
from supervisor.records import dataclass

__all__ = [
    "SOCKET_CHECK_EVERY",
    "Controller",
    "DaemonAlreadyRunning",
    "Limits",
    "ListenError",
    "Observed",
    "ServeInfo",
    "serve",
]


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class ServeInfo:
    """Where the server listens; passed to ``task_status.started()``. ``recheck()`` makes the server look at
    its socket file now (SIGHUP) instead of at the next periodic check."""

    socket_path: Path
    tcp_address: tuple[str, int] | None
    http_address: tuple[str, int] | None = None   # the read-only listener's (--http), when there is one
    recheck: Callable[[], None] = field(default=_nothing, compare=False, repr=False)
    check_every: Callable[[float], None] = field(default=lambda _s: None, compare=False, repr=False)
    """Set the period of the socket's own checks (``math.inf``: only at ``recheck()``, when the caller watches
    the folder with inotify)."""



def _default_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def serve(
    controller: Controller,
    socket_path: Path,
    *,
    listen: tuple[str, int] | None = None,
    token: str | None = None,
    log: Callable[[str], None] = _default_log,
    limits: Limits = Limits(),
    http: tuple[str, int] | None = None,
    observed: Observed | None = None,
    bound: BoundSockets | None = None,
    task_status: anyio.abc.TaskStatus[ServeInfo] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API until cancelled; the socket file is removed on exit.

    With ``http``, also the read-only listener there (:mod:`supervisor.control.readonly`: the status page,
    ``/metrics``, status and events, no token), with connection and stream limits of its own. ``observed``
    is what ``/metrics`` and the page read besides the status (:class:`~supervisor.control.metrics.Observed`).

    Raises ``DaemonAlreadyRunning`` when another daemon answers on ``socket_path`` and
    ``ListenError`` when the socket or the TCP listener cannot be set up (for TCP: no token, or
    one shorter than 20 characters).  ``task_status.started()`` receives a ``ServeInfo`` with the
    actual TCP addresses (useful with port 0).  A socket file (or its folder) deleted while serving is
    noticed within ``SOCKET_CHECK_EVERY`` seconds (or at ``ServeInfo.recheck()``) and made again.

    ``bound``: the sockets :func:`~supervisor.control.listen.bind_api` bound earlier for these arguments
    (``qasup up`` binds them before any service starts), taken over here; without it, they are bound here.
    """
    socket_path = Path(socket_path)
    if bound is None:
        bound = bind_api(socket_path, listen=listen, token=token, http=http)
    bound.taken = True   # from here on, the finally below closes and removes them
    unix_sock: socket.socket | None = bound.unix  # closed here unless a listener owns it
    tcp_sock: socket.socket | None = bound.tcp
    http_sock: socket.socket | None = bound.http
    refusals = Refusals()   # one count for every listener (/metrics: qasup_api_refused_total)
    observed = dataclasses.replace(observed or Observed(), api_refused=refusals.snapshot)
    spare = Spare(log, refusals)   # shared: when accept() finds no descriptor, any server's idle connection may go
    server = _ApiServer(Routes(controller, log, limits, token, observed, refusals), log, limits, spare)
    unix = _UnixSocket(socket_path, server, log)
    unix.inode = bound.inode
    tcp_listener: anyio.abc.SocketListener | None = None
    http_listener: anyio.abc.SocketListener | None = None
    try:
        unix_listener = await anyio.abc.SocketListener.from_socket(bound.unix)
        unix_sock = None  # owned by the listener now
        tcp_address = None
        if tcp_sock is not None:
            tcp_address = tcp_sock.getsockname()[:2]
            tcp_listener = await anyio.abc.SocketListener.from_socket(tcp_sock)
            tcp_sock = None
        http_address = None
        if http_sock is not None:
            http_address = http_sock.getsockname()[:2]
            http_listener = await anyio.abc.SocketListener.from_socket(http_sock)
            http_sock = None
        try:
            async with anyio.create_task_group() as tg:
                unix.install(unix_listener, unix.inode, tg)
                if tcp_listener is not None:
                    tg.start_soon(server.accept_loop, tcp_listener, True, tg)
                if http_listener is not None:
                    readonly = _ApiServer(ReadOnlyRoutes(controller, log, limits, observed, refusals), log, limits,
                                          spare)
                    tg.start_soon(readonly.accept_loop, http_listener, True, tg)
                    log(f"api: status page and /metrics on {_url(http_address)} (read-only, no token)")
                tg.start_soon(unix.watch, tg)
                task_status.started(ServeInfo(socket_path, tcp_address, http_address, recheck=unix.poke,
                                               check_every=unix.set_check_every))
        finally:
            with anyio.CancelScope(shield=True):
                await unix.close()
                for listener in (tcp_listener, http_listener):
                    if listener is not None:
                        await listener.aclose()
    finally:
        spare.close()
        for sock in (unix_sock, tcp_sock, http_sock):
            if sock is not None:
                sock.close()
        remove_our_socket(socket_path, unix.inode)


class _UnixSocket:
    """The Unix socket's listener, and the watch that binds the path anew when its file went missing."""

    def __init__(self, path: Path, server: _ApiServer, log: Callable[[str], None]) -> None:
        self.path = path
        self.server = server
        self.log = log
        self.inode = -1
        self.listener: anyio.abc.SocketListener | None = None
        self._scope: anyio.CancelScope | None = None
        self._wake = anyio.Event()
        self.check_every = SOCKET_CHECK_EVERY
        self._problem: str | None = None   # the last reason it could not be bound anew (said once)

    def install(self, listener: anyio.abc.SocketListener, inode: int, tg: anyio.abc.TaskGroup) -> None:
        self.listener, self.inode = listener, inode
        self._scope = scope = anyio.CancelScope()

        async def accept() -> None:
            with scope:
                await self.server.accept_loop(listener, False, tg)

        tg.start_soon(accept)

    def poke(self) -> None:
        self._wake.set()

    def set_check_every(self, seconds: float) -> None:
        self.check_every = seconds
        self._wake.set()

    def _present(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            return False
        except OSError:
            return True   # cannot tell (EACCES, ...): leave it be

    async def watch(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            # the daemon pokes this on an inotify event in the socket's folder (no idle wake-ups); the period
            # is the fallback where inotify is missing
            with anyio.move_on_after(self.check_every):
                await self._wake.wait()
            self._wake = anyio.Event()
            if not self._present():
                await self._rebind(tg)

    async def _rebind(self, tg: anyio.abc.TaskGroup) -> None:
        try:
            sock = bind_unix_socket(self.path)
            inode = os.stat(self.path).st_ino
        except (ListenError, DaemonAlreadyRunning, OSError) as exc:
            problem = f"api: {self.path} is gone and cannot be made again: {exc}; retrying"
            if problem != self._problem:
                self._problem = problem
                self.log(problem)
            return
        self._problem = None
        old_listener, old_scope = self.listener, self._scope
        self.install(await anyio.abc.SocketListener.from_socket(sock), inode, tg)
        if old_scope is not None:
            old_scope.cancel()
        if old_listener is not None:
            with anyio.CancelScope(shield=True):
                await old_listener.aclose()
        self.log(f"api: {self.path} had gone missing: listening there again")

    async def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        if self.listener is not None:
            await self.listener.aclose()


_ACCEPT_PAUSE = 0.05


class _ApiServer:
    """Accepts connections up to the cap (503 beyond it) and serves each one request after another."""

    def __init__(self, routes: Routes, log: Callable[[str], None], limits: Limits, spare: Spare) -> None:
        self.routes = routes
        self.log = log
        self.limits = limits
        self.spare = spare
        self._active = 0
        self._last_busy_log = 0.0
        self._last_accept_log = 0.0

    async def accept_loop(
        self, listener: anyio.abc.SocketListener, is_tcp: bool, tg: anyio.abc.TaskGroup
    ) -> None:
        """Accept until the listener is closed; per-connection failures and accept() errors never end it.
        Out of descriptors (EMFILE/ENFILE), it frees one it can spare and accepts again at once
        (:mod:`supervisor.control.spare`: the longest idle connection, else a 503 on the reserve descriptor);
        with nothing to free, and on other errors, it backs off (50 ms doubling to 1 s) and tries again, the
        socket stays where it is."""
        pause = _ACCEPT_PAUSE
        raw = listener.extra(anyio.abc.SocketAttribute.raw_socket)
        waiting = False   # a client was waiting when accept() last failed
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except (OSError, anyio.BrokenResourceError) as exc:  # EMFILE and the like: free one, or wait, retry
                if out_of_fds(exc):
                    if not waiting:
                        # accept() fails so with no client too (the descriptor comes first): free one only for a
                        # client that is there; until one is, wait for it, with no wake-ups
                        await anyio.wait_readable(raw)
                        waiting = True
                        continue
                    waiting = False
                    if await self.spare.make_room(raw, exc):
                        pause = _ACCEPT_PAUSE
                        continue
                now = time.monotonic()
                if now - self._last_accept_log > 10.0:
                    self._last_accept_log = now
                    cause = exc.__cause__ or exc
                    why = out_of_fds_text(cause) if out_of_fds(exc) else str(cause)
                    self.log(f"api: cannot accept a connection: {why}; retrying")
                await anyio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            pause, waiting = _ACCEPT_PAUSE, False
            self.spare.fill()   # the reserve again, if an earlier shortage cost it (one attribute test if not)
            if self._active >= self.limits.max_connections:
                tg.start_soon(self._refuse_busy, stream)
            else:
                self._active += 1
                tg.start_soon(self._serve_connection, stream, is_tcp)

    async def _refuse_busy(self, stream: anyio.abc.SocketStream) -> None:
        self.spare.refusals.add("connection_limit")
        now = time.monotonic()
        if now - self._last_busy_log > 1.0:
            self._last_busy_log = now
            self.log(f"api: more than {self.limits.max_connections} connections; refusing new ones")
        with anyio.move_on_after(1.0):
            try:
                await stream.send(BUSY_RESPONSE)
            except Exception:
                pass
        with anyio.CancelScope(shield=True):
            await stream.aclose()

    async def _serve_connection(self, stream: anyio.abc.SocketStream, is_tcp: bool) -> None:
        peer = _peer_label(stream, is_tcp)
        idle = self.spare.connection()
        try:
            await self._connection_loop(Channel(stream, peer, self.limits), is_tcp, idle)
        except Exception as exc:  # noqa: BLE001 - a bug here must cost one connection, never the daemon
            if not client_went_away(exc):
                self.log(f"api: internal error serving {peer}: {type(exc).__name__}: {exc}")
        finally:
            self._active -= 1
            with anyio.CancelScope(shield=True):
                if idle.farewell:   # shed before its first answer: "busy, try again"
                    with anyio.move_on_after(0.1):
                        try:
                            await stream.send(idle.farewell)
                        except Exception:  # noqa: BLE001 - best effort, the socket is closed next
                            pass
                await stream.aclose()
            idle.closed()

    async def _connection_loop(self, ch: Channel, is_tcp: bool, idle: Idle) -> None:
        while True:
            try:
                with anyio.fail_after(self.limits.request_timeout):
                    request = None
                    with idle:   # no request in flight: out of descriptors, this connection may be shed
                        request = await ch.receive_request()
            except TimeoutError:
                if ch.bytes_this_cycle or ch.conn.their_state is not h11.IDLE:
                    self.log(f"api: {ch.peer}: request not complete within {self.limits.request_timeout:g}s; closing")
                    await ch.send_error(408, "request not complete in time")
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if 400 <= exc.error_status_hint <= 599 else 400
                self.log(f"api: {ch.peer}: malformed request: {exc}")
                await ch.send_error(status, f"malformed request: {exc}")
                return
            except Reject as exc:
                self.log(f"api: {ch.peer}: {exc.message}")
                await ch.send_error(exc.status, exc.message)
                return
            if request is None:
                return
            try:
                keep_open = await self.routes.dispatch(ch, request, is_tcp)
            except OSError as exc:   # a handler short of a descriptor (a lazy import, a file): 503, not silence
                if not out_of_fds(exc):
                    raise
                why = out_of_fds_text(exc)
                self.spare.say("request", f"api: {ch.peer}: {request.method} {request.target[:200]!r}: {why}")
                await ch.send_error(503, f"the qasup daemon is {why}; try again")
                return
            idle.answered = True
            if idle.shed or not keep_open or ch.conn.our_state is not h11.DONE or ch.conn.their_state is not h11.DONE:
                return
            ch.conn.start_next_cycle()
            ch.bytes_this_cycle = 0


def _url(address: tuple[str, int] | None) -> str:
    assert address is not None
    host, port = address
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _peer_label(stream: anyio.abc.SocketStream, is_tcp: bool) -> str:
    if not is_tcp:
        return "unix client"
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address)
        return f"{address[0]}:{address[1]}"
    except Exception:  # noqa: BLE001
        return "tcp client"
