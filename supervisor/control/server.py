"""The control API server that runs inside ``qasup up``.

HTTP/1.1 with JSON bodies, parsed by h11 (no hand-written HTTP parsing), served with anyio on a
Unix socket (mode 0600) and optionally on a TCP listener that requires a bearer token.  The
server never trusts its clients: every request is bounded in header size, body size and time,
the number of connections is capped, service names are validated before they reach the
controller, and no request can stop the daemon except ``POST /v1/shutdown``.  A malformed
request costs one log line and a 4xx answer, never a crash.

Endpoints (see ``/work/shared/spec/interface.md``, "Control API")::

    GET  /v1/status[?names=a,b]
    POST /v1/services/NAME/start | stop | restart[?with_dependents=1]   (or body {"with_dependents": true})
    GET  /v1/services/NAME/logs?n=100&follow=1       text/plain; with follow=1 streamed (chunked)
    GET  /v1/events                                  application/x-ndjson, one JSON object a line, streamed
    POST /v1/reload
    POST /v1/shutdown

``wait-ready`` is done client side by polling ``/v1/status`` (see ``supervisor.cli.control_verbs``): it needs no
extra endpoint, holds no connection slot while waiting, and the status JSON is cheap to build.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import sys
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Protocol, Sequence
from urllib.parse import unquote_to_bytes

import anyio
import anyio.abc
import h11

from supervisor.cli.control_verbs import mask_secrets

__all__ = [
    "ControlError",
    "Controller",
    "DaemonAlreadyRunning",
    "Limits",
    "ListenError",
    "MIN_TOKEN_LENGTH",
    "NAME_RE",
    "ServeInfo",
    "mask_secrets",
    "serve",
]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MIN_TOKEN_LENGTH = 20

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_MAX_QUERY_FIELDS = 16
_BACKLOG = 512  # a full Unix-socket backlog makes clients with a time-out fail at once (EAGAIN)
_SERVICE_ACTIONS = ("start", "stop", "restart")


class ControlError(Exception):
    """Raised by a Controller when an action cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status if isinstance(status, int) and 400 <= status <= 599 else 500


class DaemonAlreadyRunning(RuntimeError):
    """A live daemon already answers on the socket path we were asked to serve on."""


class ListenError(RuntimeError):
    """The API cannot listen where it was asked to (bad socket path, TCP listener without a token, ...)."""


class Controller(Protocol):
    """What the engine offers the API.  Only ``ControlError`` should escape these methods."""

    def status(self, names: Sequence[str] = ()) -> dict:
        """The status JSON of interface.md, restricted to ``names`` when given (all services otherwise)."""

    def has_service(self, name: str) -> bool:
        """Whether a service (unit) of this name exists, enabled or not."""

    async def start(self, name: str) -> dict:
        """Start a service; raises ControlError(message, http_status)."""

    async def stop(self, name: str) -> dict:
        """Stop a service; raises ControlError(message, http_status)."""

    async def restart(self, name: str, with_dependents: bool = False) -> dict:
        """Restart a service (and, with ``with_dependents``, what requires it)."""

    def log_path(self, name: str) -> Path:
        """The service's current log file."""

    def subscribe_events(self) -> AbstractAsyncContextManager[AsyncIterator[dict]]:
        """Each state transition, as a dict, from the moment the context is entered."""

    async def reload(self) -> dict:
        """Re-read the configuration: ``{"changed": [...], ...}``, or ControlError(message, 400)."""

    async def shutdown(self) -> None:
        """Begin the ordered shutdown and return at once."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may cost the daemon."""

    max_header_bytes: int = 16 * 1024  # request line + headers (h11 max_incomplete_event_size)
    max_body_bytes: int = 64 * 1024
    request_timeout: float = 10.0  # to receive one whole request; also the keep-alive idle time
    send_timeout: float = 30.0  # for one write to a client that stops reading
    max_connections: int = 64  # connections beyond this get 503 and are closed at once
    max_streams: int = 32  # of those, streamed answers (events, logs -f); keeps room for status
    max_log_lines: int = 100_000  # largest ?n= for the logs endpoint
    follow_buffer_chunks: int = 1024  # followed log chunks queued for a slow reader before we drop it


@dataclass(frozen=True)
class ServeInfo:
    """Where the server listens; passed to ``task_status.started()``."""

    socket_path: Path
    tcp_address: tuple[str, int] | None


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
    task_status: anyio.abc.TaskStatus[ServeInfo] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API until cancelled; the socket file is removed on exit.

    Raises ``DaemonAlreadyRunning`` when another daemon answers on ``socket_path`` and
    ``ListenError`` when the socket or the TCP listener cannot be set up (for TCP: no token, or
    one shorter than 20 characters).  ``task_status.started()`` receives a ``ServeInfo`` with the
    actual TCP address (useful with port 0).
    """
    socket_path = Path(socket_path)
    if listen is not None and (not token or len(token) < MIN_TOKEN_LENGTH):
        raise ListenError(
            f"--listen {listen[0]}:{listen[1]} needs QASUP_TOKEN set to a secret of at least "
            f"{MIN_TOKEN_LENGTH} characters (clients send it as 'Authorization: Bearer TOKEN')"
        )
    unix_sock = _bind_unix_socket(socket_path)
    inode = os.stat(socket_path).st_ino
    tcp_sock: socket.socket | None = None
    try:
        if listen is not None:
            tcp_sock = _bind_tcp_socket(listen)
        server = _ApiServer(controller, log, limits, token)
        unix_listener = await anyio.abc.SocketListener.from_socket(unix_sock)
        unix_sock = None  # owned by the listener now
        listeners: list[tuple[anyio.abc.SocketListener, bool]] = [(unix_listener, False)]
        tcp_address = None
        if tcp_sock is not None:
            tcp_address = tcp_sock.getsockname()[:2]
            listeners.append((await anyio.abc.SocketListener.from_socket(tcp_sock), True))
            tcp_sock = None
        try:
            async with anyio.create_task_group() as tg:
                for listener, is_tcp in listeners:
                    tg.start_soon(server.accept_loop, listener, is_tcp, tg)
                task_status.started(ServeInfo(socket_path, tcp_address))
        finally:
            with anyio.CancelScope(shield=True):
                for listener, _ in listeners:
                    await listener.aclose()
    finally:
        if unix_sock is not None:
            unix_sock.close()
        if tcp_sock is not None:
            tcp_sock.close()
        _remove_our_socket(socket_path, inode)


# --------------------------------------------------------------------------- socket set-up


def _bind_unix_socket(path: Path) -> socket.socket:
    """Bind and listen on ``path`` with mode 0600, replacing a stale socket file but never a live one.

    The parent directory is created with mode 0700 when missing.  Permissions are set between
    bind() and listen(): connections are refused until listen(), so there is no window in which
    another user could connect.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ListenError(f"cannot create the socket folder {path.parent}: {exc.strerror}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenError(f"cannot inspect {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(f"{path} exists and is not a socket; refusing to replace it")
        if _socket_answers(path):
            raise DaemonAlreadyRunning(f"a qasup daemon is already answering on {path}")
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    return sock


def _socket_answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except OSError as exc:
        # A socket we may not connect to (EACCES) belongs to a live process of another user:
        # treat it as alive rather than deleting it.
        return exc.errno in (errno.EACCES, errno.EPERM, errno.EAGAIN)
    else:
        return True
    finally:
        probe.close()


def _bind_tcp_socket(listen: tuple[str, int]) -> socket.socket:
    host, port = listen
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"--listen {host}:{port}: {exc.strerror}") from None
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _remove_our_socket(path: Path, inode: int) -> None:
    """Unlink the socket file unless another daemon has replaced it in the meantime."""
    try:
        if os.lstat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------- requests


class _Reject(Exception):
    """A request we answer with an error status and then close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Answer(Exception):
    """Raised by request handlers to answer with an error; the connection stays usable."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


@dataclass
class _Request:
    method: str
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes
    segments: list[str] = field(default_factory=list)  # decoded path segments, set by _dispatch
    query: dict[str, str] = field(default_factory=dict)


def _parse_target(target: bytes) -> tuple[list[str], dict[str, str]]:
    """Split an origin-form target into decoded path segments and a query dict; _Answer(400) if bad."""
    if not target.startswith(b"/"):
        raise _Answer(400, "the request target must be a path starting with '/'")
    if _BAD_PERCENT.search(target):
        raise _Answer(400, "invalid percent-encoding in the request target")
    raw_path, _, raw_query = target.partition(b"?")
    try:
        segments = [unquote_to_bytes(s).decode("utf-8") for s in raw_path[1:].split(b"/")]
    except UnicodeDecodeError:
        raise _Answer(400, "the request path is not valid UTF-8") from None
    query: dict[str, str] = {}
    fields = [f for f in raw_query.split(b"&") if f]
    if len(fields) > _MAX_QUERY_FIELDS:
        raise _Answer(400, f"too many query parameters (at most {_MAX_QUERY_FIELDS})")
    for field in fields:
        raw_key, _, raw_value = field.partition(b"=")
        try:
            key = unquote_to_bytes(raw_key.replace(b"+", b" ")).decode("utf-8")
            value = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise _Answer(400, "the query string is not valid UTF-8") from None
        if key in query:
            raise _Answer(400, f"query parameter {key!r} given twice")
        query[key] = value
    return segments, query


def _parse_bool(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise _Answer(400, f"{what} must be 1 or 0, got {text!r}")


def _check_query(query: dict[str, str], allowed: Sequence[str]) -> None:
    for key in query:
        if key not in allowed:
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            raise _Answer(400, f"unknown query parameter {key!r}{hint}")


def _json_object_body(body: bytes, allowed: Sequence[str]) -> dict[str, Any]:
    """The request body as a JSON object (empty body = {}); _Answer(400) if it is anything else."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Answer(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _Answer(400, "the request body must be a JSON object")
    for key in value:
        if key not in allowed:
            raise _Answer(400, f"unknown field {key!r} in the request body")
    return value


# --------------------------------------------------------------------------- connections


class _Channel:
    """One client connection: the byte stream, its h11 state machine and bounded writes."""

    def __init__(self, stream: anyio.abc.ByteStream, peer: str, limits: Limits) -> None:
        self.stream = stream
        self.peer = peer
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.bytes_this_cycle = 0

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            with anyio.fail_after(self.limits.send_timeout):
                await self.stream.send(data)

    async def receive(self) -> bytes:
        try:
            data = await self.stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            data = b""
        self.bytes_this_cycle += len(data)
        return data

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Sequence[tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        hdrs = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        hdrs.extend(headers)
        if close:
            hdrs.append(("Connection", "close"))
        await self.send(h11.Response(status_code=status, headers=hdrs, reason=_reason(status)))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def respond_json(
        self, status: int, payload: Any, headers: Sequence[tuple[str, str]] = (), close: bool = False
    ) -> None:
        await self.respond(status, _encode_json(payload), headers=headers, close=close)

    async def start_stream(self, content_type: str) -> None:
        """Send the head of a streamed response (chunked for HTTP/1.1, close-delimited for 1.0)."""
        headers = [("Content-Type", content_type), ("Cache-Control", "no-store")]
        await self.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _encode_json(payload: Any) -> bytes:
    return (json.dumps(mask_secrets(payload), default=str) + "\n").encode("utf-8")


_BUSY_BODY = b'{"error": "too many connections to the qasup control API; try again"}\n'
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + _BUSY_BODY
)


class _ApiServer:
    def __init__(
        self, controller: Controller, log: Callable[[str], None], limits: Limits, token: str | None
    ) -> None:
        self.controller = controller
        self.log = log
        self.limits = limits
        self._token = token.encode("utf-8") if token else None
        self._active = 0
        self._streams = 0
        self._last_busy_log = 0.0
        self._last_accept_log = 0.0

    # ----------------------------------------------------------------- accepting

    async def accept_loop(
        self, listener: anyio.abc.SocketListener, is_tcp: bool, tg: anyio.abc.TaskGroup
    ) -> None:
        """Accept forever; per-connection failures and accept() errors (EMFILE, ...) never end it."""
        while True:
            try:
                stream = await listener.accept()
            except (OSError, anyio.BrokenResourceError) as exc:  # EMFILE and the like: wait, retry
                now = time.monotonic()
                if now - self._last_accept_log > 10.0:
                    self._last_accept_log = now
                    self.log(f"api: accept failed: {exc}; retrying")
                await anyio.sleep(0.1)
                continue
            if self._active >= self.limits.max_connections:
                tg.start_soon(self._refuse_busy, stream)
            else:
                self._active += 1
                tg.start_soon(self._serve_connection, stream, is_tcp)

    async def _refuse_busy(self, stream: anyio.abc.SocketStream) -> None:
        now = time.monotonic()
        if now - self._last_busy_log > 1.0:
            self._last_busy_log = now
            self.log(f"api: more than {self.limits.max_connections} connections; refusing new ones")
        with anyio.move_on_after(1.0):
            try:
                await stream.send(_BUSY_RESPONSE)
            except Exception:
                pass
        with anyio.CancelScope(shield=True):
            await stream.aclose()

    async def _serve_connection(self, stream: anyio.abc.SocketStream, is_tcp: bool) -> None:
        peer = _peer_label(stream, is_tcp)
        try:
            await self._connection_loop(_Channel(stream, peer, self.limits), is_tcp)
        except Exception as exc:  # noqa: BLE001 - a bug here must cost one connection, never the daemon
            if not _client_went_away(exc):
                self.log(f"api: internal error serving {peer}: {type(exc).__name__}: {exc}")
        finally:
            self._active -= 1
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _connection_loop(self, ch: _Channel, is_tcp: bool) -> None:
        while True:
            try:
                with anyio.fail_after(self.limits.request_timeout):
                    request = await self._receive_request(ch)
            except TimeoutError:
                if ch.bytes_this_cycle or ch.conn.their_state is not h11.IDLE:
                    self.log(f"api: {ch.peer}: request not complete within {self.limits.request_timeout:g}s; closing")
                    await self._send_error(ch, 408, "request not complete in time")
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if 400 <= exc.error_status_hint <= 599 else 400
                self.log(f"api: {ch.peer}: malformed request: {exc}")
                await self._send_error(ch, status, f"malformed request: {exc}")
                return
            except _Reject as exc:
                self.log(f"api: {ch.peer}: {exc.message}")
                await self._send_error(ch, exc.status, exc.message)
                return
            if request is None:
                return
            keep_open = await self._dispatch(ch, request, is_tcp)
            if not keep_open or ch.conn.our_state is not h11.DONE or ch.conn.their_state is not h11.DONE:
                return
            ch.conn.start_next_cycle()
            ch.bytes_this_cycle = 0

    async def _receive_request(self, ch: _Channel) -> _Request | None:
        """Read one complete request (head and body); None when the client closed cleanly."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = ch.conn.next_event()
            if event is h11.NEED_DATA:
                if ch.conn.they_are_waiting_for_100_continue and request is not None:
                    await ch.send(h11.InformationalResponse(status_code=100, headers=[]))
                ch.conn.receive_data(await ch.receive())
            elif isinstance(event, h11.Request):
                request = event
                _check_request_head(event, self.limits)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body_bytes:
                    raise _Reject(413, f"request body larger than {self.limits.max_body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                # The target is parsed in _dispatch, so that a bad target gets a 400 on a live connection.
                return _Request(
                    method=request.method.decode("ascii", "replace"),
                    target=bytes(request.target),
                    headers={name: value for name, value in request.headers},
                    body=bytes(body),
                )
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _send_error(self, ch: _Channel, status: int, message: str) -> None:
        """Best-effort error answer on a connection that will be closed right after."""
        try:
            with anyio.move_on_after(min(2.0, self.limits.send_timeout)):
                await ch.respond_json(status, {"error": message}, close=True)
        except (h11.LocalProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    # ----------------------------------------------------------------- routing

    async def _dispatch(self, ch: _Channel, request: _Request, is_tcp: bool) -> bool:
        """Answer one request; returns whether the connection may serve another."""
        target = request.target
        try:
            if is_tcp and not self._authorized(request.headers.get(b"authorization")):
                raise _Answer(401, "missing or wrong bearer token", [("WWW-Authenticate", 'Bearer realm="qasup"')])
            request.segments, request.query = _parse_target(target)
            return await self._route(ch, request)
        except _Answer as answer:
            if answer.status >= 500:
                self.log(f"api: {ch.peer}: {request.method} {target[:200]!r}: {answer.message}")
            elif answer.status in (400, 401):
                self.log(f"api: {ch.peer}: {answer.status} for {request.method} {target[:200]!r}: {answer.message}")
            await ch.respond_json(answer.status, {"error": answer.message}, headers=answer.headers)
            return True

    def _authorized(self, header: bytes | None) -> bool:
        if self._token is None or header is None:
            return False
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        import hmac   # here, not at the top: hmac loads OpenSSL (~3 MiB resident) for every daemon

        return hmac.compare_digest(credentials.strip(), self._token)

    async def _route(self, ch: _Channel, req: _Request) -> bool:
        seg = req.segments
        if len(seg) == 2 and seg[0] == "v1":
            if seg[1] == "status":
                _allow(req, "GET")
                return await self._status(ch, req)
            if seg[1] == "events":
                _allow(req, "GET")
                return await self._events(ch, req)
            if seg[1] == "reload":
                _allow(req, "POST")
                return await self._reload(ch, req)
            if seg[1] == "shutdown":
                _allow(req, "POST")
                return await self._shutdown(ch, req)
        if len(seg) == 4 and seg[0] == "v1" and seg[1] == "services":
            if seg[3] in _SERVICE_ACTIONS:
                _allow(req, "POST")
                return await self._service_action(ch, req, self._known_name(seg[2]), seg[3])
            if seg[3] == "logs":
                _allow(req, "GET")
                return await self._logs(ch, req, self._known_name(seg[2]))
        raise _Answer(404, "no such endpoint")

    def _known_name(self, name: str) -> str:
        if not NAME_RE.fullmatch(name):
            raise _Answer(400, f"invalid service name {name[:80]!r}: names match ^[a-z0-9][a-z0-9_.-]{{0,62}}$")
        if not self._call_sync(self.controller.has_service, name):
            raise _Answer(404, f"unknown service {name!r}")
        return name

    # ----------------------------------------------------------------- endpoints

    async def _status(self, ch: _Channel, req: _Request) -> bool:
        _check_query(req.query, ["names"])
        names = [n for n in req.query.get("names", "").split(",") if n]
        for name in names:
            self._known_name(name)
        payload = self._call_sync(self.controller.status, names)
        await ch.respond_json(200, payload)
        return True

    async def _service_action(self, ch: _Channel, req: _Request, name: str, action: str) -> bool:
        allowed = ["with_dependents"] if action == "restart" else []
        _check_query(req.query, allowed)
        body = _json_object_body(req.body, allowed)
        if action == "restart":
            with_dependents = _parse_bool(req.query.get("with_dependents", "0"), "with_dependents")
            from_body = body.get("with_dependents", False)
            if not isinstance(from_body, bool):
                raise _Answer(400, "with_dependents must be true or false")
            result = await self._call(self.controller.restart, name, with_dependents or from_body)
        elif action == "start":
            result = await self._call(self.controller.start, name)
        else:
            result = await self._call(self.controller.stop, name)
        await ch.respond_json(200, result)
        return True

    async def _reload(self, ch: _Channel, req: _Request) -> bool:
        _check_query(req.query, [])
        _json_object_body(req.body, [])
        result = await self._call(self.controller.reload)
        await ch.respond_json(200, result)
        return True

    async def _shutdown(self, ch: _Channel, req: _Request) -> bool:
        _check_query(req.query, [])
        _json_object_body(req.body, [])
        await self._call(self.controller.shutdown)
        self.log(f"api: shutdown requested by {ch.peer}")
        # The controller may cancel this server soon; make sure the client hears the answer.
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            await ch.respond_json(202, {"shutting_down": True}, close=True)
        return False

    async def _logs(self, ch: _Channel, req: _Request, name: str) -> bool:
        _check_query(req.query, ["n", "follow"])
        raw_n = req.query.get("n", "100")
        if not raw_n.isdigit() or int(raw_n) > self.limits.max_log_lines:
            raise _Answer(400, f"n must be a whole number from 0 to {self.limits.max_log_lines}, got {raw_n[:40]!r}")
        n = int(raw_n)
        follow = _parse_bool(req.query.get("follow", "0"), "follow")
        path = Path(self._call_sync(self.controller.log_path, name))
        from supervisor.logs import core as logs  # imported here: the log module is only needed by this endpoint

        if not follow:
            try:
                tail = await anyio.to_thread.run_sync(logs.tail_lines, path, n) if n else b""
            except OSError as exc:
                raise _Answer(500, f"cannot read the log of {name}: {exc.strerror or exc}") from None
            await ch.respond(200, tail, content_type="text/plain; charset=utf-8")
            return True
        self._take_stream_slot()
        try:
            return await self._follow_log(ch, name, path, n, logs)
        finally:
            self._streams -= 1

    def _take_stream_slot(self) -> None:
        if self._streams >= self.limits.max_streams:
            raise _Answer(503, f"too many streaming clients (at most {self.limits.max_streams}); try again")
        self._streams += 1

    async def _follow_log(self, ch: _Channel, name: str, path: Path, n: int, logs: Any) -> bool:
        await ch.start_stream("text/plain; charset=utf-8")
        send_chunks, receive_chunks = anyio.create_memory_object_stream[bytes](self.limits.follow_buffer_chunks)
        overflow = False

        def on_chunk(chunk: bytes) -> None:
            nonlocal overflow
            try:
                send_chunks.send_nowait(bytes(chunk))
            except anyio.WouldBlock:
                overflow = True
                send_chunks.close()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass

        async def pump(tg: anyio.abc.TaskGroup) -> None:
            async with receive_chunks:
                async for chunk in receive_chunks:
                    await ch.send(h11.Data(data=chunk))
            tg.cancel_scope.cancel()

        try:
            async with send_chunks, anyio.create_task_group() as tg:
                tg.start_soon(self._cancel_when_client_leaves, ch, tg.cancel_scope)
                tg.start_soon(pump, tg)
                # initial_lines: the last n lines, then what follows, with no gap or overlap.
                await logs.follow(path, on_chunk, from_end=True, initial_lines=n)
                tg.cancel_scope.cancel()
        finally:
            await _end_stream(ch)
        if overflow:
            self.log(f"api: {ch.peer}: log follower of {name} read too slowly; dropped")
        return False

    async def _events(self, ch: _Channel, req: _Request) -> bool:
        _check_query(req.query, [])
        self._take_stream_slot()
        try:
            return await self._stream_events(ch)
        finally:
            self._streams -= 1

    async def _stream_events(self, ch: _Channel) -> bool:
        async with self.controller.subscribe_events() as events:
            await ch.start_stream("application/x-ndjson")
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._cancel_when_client_leaves, ch, tg.cancel_scope)
                    async for event in events:
                        await ch.send(h11.Data(data=_encode_json(event)))
                    tg.cancel_scope.cancel()
            finally:
                await _end_stream(ch)
        return False

    async def _cancel_when_client_leaves(self, ch: _Channel, scope: anyio.CancelScope) -> None:
        """During a streamed answer, read (and drop) what the client sends; cancel ``scope`` at EOF."""
        while await ch.receive():
            pass
        scope.cancel()

    # ----------------------------------------------------------------- controller calls

    async def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        try:
            return await func(*args)
        except ControlError as exc:
            raise _Answer(exc.status, exc.message) from None
        except Exception as exc:  # noqa: BLE001 - an engine bug must not take the API down
            raise _Answer(500, f"internal error: {type(exc).__name__}: {exc}") from None

    def _call_sync(self, func: Callable[..., Any], *args: Any) -> Any:
        try:
            return func(*args)
        except ControlError as exc:
            raise _Answer(exc.status, exc.message) from None
        except Exception as exc:  # noqa: BLE001
            raise _Answer(500, f"internal error: {type(exc).__name__}: {exc}") from None


async def _end_stream(ch: _Channel) -> None:
    """Finish a streamed answer properly (the final empty chunk), also when the server is being
    cancelled, so that a follower sees a clean end rather than a broken connection."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(0.5):
        try:
            await ch.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, *_GONE_BASE):
            pass


_GONE_BASE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, TimeoutError, OSError)


def _client_went_away(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception in a group) only says the client left or stopped reading."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_went_away(e) for e in exc.exceptions)
    return isinstance(exc, _GONE)


def _allow(req: _Request, method: str) -> None:
    if req.method != method:
        raise _Answer(405, f"use {method} for this endpoint", [("Allow", method)])


def _check_request_head(request: h11.Request, limits: Limits) -> None:
    """Reject what h11 accepts but we do not serve: other HTTP versions, ambiguous or huge bodies."""
    if request.http_version not in (b"1.0", b"1.1"):
        raise _Reject(505, f"HTTP version {request.http_version.decode('ascii', 'replace')} is not supported")
    # h11 bounds only an *incomplete* head; one that arrives whole in a single read is bounded here.
    head_size = len(request.method) + len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
    if head_size > limits.max_header_bytes:
        raise _Reject(431, f"request head larger than {limits.max_header_bytes} bytes")
    has_length = has_chunked = False
    for name, value in request.headers:
        if name == b"content-length":
            has_length = True
            if int(value) > limits.max_body_bytes:
                raise _Reject(413, f"request body larger than {limits.max_body_bytes} bytes")
        elif name == b"transfer-encoding":
            has_chunked = True
    if has_length and has_chunked:
        raise _Reject(400, "both Content-Length and Transfer-Encoding given")


def _peer_label(stream: anyio.abc.SocketStream, is_tcp: bool) -> str:
    if not is_tcp:
        return "unix client"
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address)
        return f"{address[0]}:{address[1]}"
    except Exception:  # noqa: BLE001
        return "tcp client"
