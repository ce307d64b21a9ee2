"""The HTTP side of the control API: one h11 connection, the request checks and the answer encoding.

Everything here is about bytes on one connection and knows nothing of the endpoints: the bounds a client
must keep (:class:`Limits`), reading one whole request (:meth:`Channel.receive_request`: head checks, body
size), parsing the target, the query and the JSON body (answering 400 for what is malformed), writing
whole, streamed and error answers with a send time-out, and telling "the client left" apart from a bug.
No hand-written HTTP parsing: h11 does it; this module adds what h11 accepts but the API does not serve.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Sequence
from dataclasses import field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
import anyio.abc
import anyio.lowlevel
import h11

from supervisor.protocol import mask_secrets
from supervisor.records import dataclass

__all__ = [
    "BUSY_RESPONSE",
    "Answer",
    "Channel",
    "MAX_JSON_DEPTH",
    "Limits",
    "Reject",
    "Request",
    "allow",
    "busy_response",
    "check_query",
    "check_request_head",
    "client_went_away",
    "encode_json",
    "json_object_body",
    "json_too_deep",
    "parse_bool",
    "parse_target",
]

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_MAX_QUERY_FIELDS = 16
_JSON_SPECIAL = re.compile(rb'[\[\]{}"\\]')
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a request body may have (400 beyond it)."""


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
    stream_buffer_bytes: int = 256 * 1024  # queued-but-unsent bytes per stream; beyond it the reader skips ahead
    streams_buffer_bytes: int = 8 * 1024 * 1024  # the same for all streams together; new streams get 503 at it
    action_deadline: float = 3600.0  # a start/stop/restart not answered by then gets 504 (it may go on)


# --------------------------------------------------------------------------- errors and requests


class Reject(Exception):
    """A request we answer with an error status and then close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Answer(Exception):
    """Raised by request handlers to answer with an error; the connection stays usable."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


@dataclass
class Request:
    """One whole request as read from the connection; ``segments`` and ``query`` are set by the router."""

    method: str
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes
    segments: list[str] = field(default_factory=list)  # decoded path segments
    query: dict[str, str] = field(default_factory=dict)


def check_request_head(request: h11.Request, limits: Limits) -> None:
    """Reject what h11 accepts but we do not serve: other HTTP versions, ambiguous or huge bodies."""
    if request.http_version not in (b"1.0", b"1.1"):
        raise Reject(505, f"HTTP version {request.http_version.decode('ascii', 'replace')} is not supported")
    # h11 bounds only an *incomplete* head; one that arrives whole in a single read is bounded here.
    head_size = len(request.method) + len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
    if head_size > limits.max_header_bytes:
        raise Reject(431, f"request head larger than {limits.max_header_bytes} bytes")
    has_length = has_chunked = False
    for name, value in request.headers:
        if name == b"content-length":
            has_length = True
            if int(value) > limits.max_body_bytes:
                raise Reject(413, f"request body larger than {limits.max_body_bytes} bytes")
        elif name == b"transfer-encoding":
            has_chunked = True
    if has_length and has_chunked:
        raise Reject(400, "both Content-Length and Transfer-Encoding given")


# --------------------------------------------------------------------------- target, query, body


def parse_target(target: bytes) -> tuple[list[str], dict[str, str]]:
    """Split an origin-form target into decoded path segments and a query dict; Answer(400) if bad."""
    if not target.startswith(b"/"):
        raise Answer(400, "the request target must be a path starting with '/'")
    if _BAD_PERCENT.search(target):
        raise Answer(400, "invalid percent-encoding in the request target")
    raw_path, _, raw_query = target.partition(b"?")
    try:
        segments = [unquote_to_bytes(s).decode("utf-8") for s in raw_path[1:].split(b"/")]
    except UnicodeDecodeError:
        raise Answer(400, "the request path is not valid UTF-8") from None
    query: dict[str, str] = {}
    fields = [f for f in raw_query.split(b"&") if f]
    if len(fields) > _MAX_QUERY_FIELDS:
        raise Answer(400, f"too many query parameters (at most {_MAX_QUERY_FIELDS})")
    for pair in fields:
        raw_key, _, raw_value = pair.partition(b"=")
        try:
            key = unquote_to_bytes(raw_key.replace(b"+", b" ")).decode("utf-8")
            value = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise Answer(400, "the query string is not valid UTF-8") from None
        if key in query:
            raise Answer(400, f"query parameter {key!r} given twice")
        query[key] = value
    return segments, query


def parse_bool(text: str, what: str) -> bool:
    """A query flag: 1/true/yes/on or (empty)/0/false/no/off, in any case; Answer(400) otherwise."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise Answer(400, f"{what} must be 1 or 0, got {text!r}")


def check_query(query: dict[str, str], allowed: Sequence[str]) -> None:
    """Answer(400) for a query parameter the endpoint does not take."""
    for key in query:
        if key not in allowed:
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            raise Answer(400, f"unknown query parameter {key!r}{hint}")


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in ``body`` nest deeper than ``limit`` (brackets in strings do not count).

    Linear in the body; decoding it would recurse once per level (RecursionError at ~1000)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = False
    escaped = -1  # the position of a character escaped by a backslash
    for match in _JSON_SPECIAL.finditer(body):
        pos = match.start()
        char = body[pos]
        if in_string:
            if pos == escaped:
                continue
            if char == 0x5C:  # backslash
                escaped = pos + 1
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif char in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def json_object_body(body: bytes, allowed: Sequence[str]) -> dict[str, Any]:
    """The request body as a JSON object (empty body = {}); Answer(400) if it is anything else."""
    if not body.strip():
        return {}
    if json_too_deep(body):
        raise Answer(400, f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels; "
                          "send a flat JSON object")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Answer(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # not reached after json_too_deep; kept so that no body can crash a request
        raise Answer(400, "the request body nests too deeply; send a flat JSON object") from None
    if not isinstance(value, dict):
        raise Answer(400, "the request body must be a JSON object")
    for key in value:
        if key not in allowed:
            raise Answer(400, f"unknown field {key!r} in the request body")
    return value


def allow(request: Request, method: str) -> None:
    """Answer(405) unless the request uses ``method``."""
    if request.method != method:
        raise Answer(405, f"use {method} for this endpoint", [("Allow", method)])


# --------------------------------------------------------------------------- answers


def reason(status: int) -> bytes:
    """The standard reason phrase of ``status`` (b"" for a code without one)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def encode_json(payload: Any, *, masked: bool = False) -> bytes:
    """One JSON answer (or event line): secrets masked, a newline at the end. ``masked``: the caller has already
    masked whatever in ``payload`` can hold a secret (a status: its rows have fixed keys; its plan part is masked
    by the caller), so the whole tree is not walked again (a third of a 1000-service status's cost)."""
    return (json.dumps(payload if masked else mask_secrets(payload), default=str) + "\n").encode("utf-8")


def busy_response(message: str) -> bytes:
    """A whole 503 answer with ``{"error": message}``, written raw (without h11, before reading the request)."""
    body = encode_json({"error": message}, masked=True)
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


BUSY_RESPONSE = busy_response("too many connections to the qasup control API; try again")
"""The whole answer to a connection over the cap: written raw, without reading the request."""

_GONE_BASE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, TimeoutError, OSError)


def client_went_away(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception in a group) only says the client left or stopped reading."""
    if isinstance(exc, BaseExceptionGroup):
        return all(client_went_away(e) for e in exc.exceptions)
    return isinstance(exc, _GONE)


# --------------------------------------------------------------------------- the connection


async def _receive_raw(sock: socket.socket) -> bytes:
    """anyio's Unix ``receive()`` (a checkpoint, recv, a wait while there is nothing) with anyio.wait_readable."""
    await anyio.lowlevel.checkpoint()
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            await anyio.wait_readable(sock)
        except OSError:   # reset, or closed under us
            return b""


class Channel:
    """One client connection: the byte stream, its h11 state machine and bounded writes."""

    def __init__(self, stream: anyio.abc.ByteStream, peer: str, limits: Limits) -> None:
        self.stream = stream
        self.peer = peer
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.bytes_this_cycle = 0
        # A Unix socket is read here, not by anyio's stream: on asyncio, its read cancelled in the loop turn the
        # socket turns readable (an idle connection shed, a stream's drain as its pump fails) logs an
        # InvalidStateError traceback; a cancelled anyio.wait_readable does not.
        unix = isinstance(stream, anyio.abc.UNIXSocketStream)
        self._raw = stream.extra(anyio.abc.SocketAttribute.raw_socket) if unix else None

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            with anyio.fail_after(self.limits.send_timeout):
                await self.stream.send(data)

    async def receive(self) -> bytes:
        if self._raw is not None:
            data = await _receive_raw(self._raw)
        else:
            try:
                data = await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                data = b""
        self.bytes_this_cycle += len(data)
        return data

    async def receive_request(self) -> Request | None:
        """Read one complete request (head and body); None when the client closed cleanly.

        Raises :class:`Reject` for a head or body over the limits, h11's ``RemoteProtocolError`` for
        what is not HTTP; the caller bounds the time."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                if self.conn.they_are_waiting_for_100_continue and request is not None:
                    await self.send(h11.InformationalResponse(status_code=100, headers=[]))
                self.conn.receive_data(await self.receive())
            elif isinstance(event, h11.Request):
                request = event
                check_request_head(event, self.limits)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body_bytes:
                    raise Reject(413, f"request body larger than {self.limits.max_body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                # The target is parsed by the router, so that a bad target gets a 400 on a live connection.
                return Request(
                    method=request.method.decode("ascii", "replace"),
                    target=bytes(request.target),
                    headers={name: value for name, value in request.headers},
                    body=bytes(body),
                )
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

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
        await self.send(h11.Response(status_code=status, headers=hdrs, reason=reason(status)))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def respond_json(
        self, status: int, payload: Any, headers: Sequence[tuple[str, str]] = (), close: bool = False,
        masked: bool = False,
    ) -> None:
        await self.respond(status, encode_json(payload, masked=masked), headers=headers, close=close)

    async def send_error(self, status: int, message: str) -> None:
        """Best-effort error answer on a connection that will be closed right after."""
        try:
            with anyio.move_on_after(min(2.0, self.limits.send_timeout)):
                await self.respond_json(status, {"error": message}, close=True)
        except (h11.LocalProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def start_stream(self, content_type: str) -> None:
        """Send the head of a streamed response (chunked for HTTP/1.1, close-delimited for 1.0)."""
        headers = [("Content-Type", content_type), ("Cache-Control", "no-store")]
        await self.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))

    async def end_stream(self) -> None:
        """Finish a streamed answer properly (the final empty chunk), also when the server is being
        cancelled, so that a follower sees a clean end rather than a broken connection."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(0.5):
            try:
                await self.send(h11.EndOfMessage())
            except (h11.LocalProtocolError, *_GONE_BASE):
                pass

    async def drain_until_eof(self, scope: anyio.CancelScope) -> None:
        """During a streamed answer, read (and drop) what the client sends; cancel ``scope`` at EOF."""
        while await self.receive():
            pass
        scope.cancel()
