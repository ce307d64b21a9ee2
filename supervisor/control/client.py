"""The CLI's client for the daemon's control socket: HTTP/1.1 over AF_UNIX, standard library only.

``qasup status`` runs often (scripts, health checks), so this module imports only ``_socket`` (and
``json`` when an answer or a body is JSON: the status table comes as text).  ``http.client`` would
cost 25-35 ms more (it pulls in ``email.parser`` and ``ssl``), and ``socket.py`` itself 4-5 ms (enum conversions, ``selectors``) for nothing we use, so the
client uses the C socket type directly, writes its one request and reads the answer itself: a
status line, headers, then a body delimited by Content-Length, chunked encoding or end of
stream.  It only talks to qasup's own server (h11), one request per connection
(``Connection: close``), with every read bounded.
"""

from __future__ import annotations

import _socket  # the C module behind socket.py; see the module docstring
import os
import time

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are strings here anyway
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = [
    "NoDaemon",
    "Overloaded",
    "ProtocolError",
    "RequestFailed",
    "StreamBroken",
    "fetch",
    "request",
    "stream_chunks",
    "stream_lines",
]

DEFAULT_TIMEOUT = 10.0
BUSY_RETRY_S = 2.0
"""How long a request answered 503 (the daemon's connection or stream slots are full) is tried again."""
_MAX_HEAD = 64 * 1024  # status line + headers
_MAX_BODY = 256 * 1024 * 1024  # a non-streamed body (logs -n 100000 of long lines stays below)


class NoDaemon(Exception):
    """No daemon answers on the socket: it is missing, refuses, or does not answer in time."""

    def __init__(self, socket_path: str | os.PathLike[str], reason: str) -> None:
        self.socket_path = os.fspath(socket_path)
        self.reason = reason
        super().__init__(f"no qasup daemon answering on {self.socket_path} ({reason})")


class Overloaded(Exception):
    """The daemon kept answering 503 (too many connections or streams) for :data:`BUSY_RETRY_S`."""

    def __init__(self, socket_path: str | os.PathLike[str], reason: str, waited: float) -> None:
        self.socket_path = os.fspath(socket_path)
        self.reason = reason
        super().__init__(f"the qasup daemon on {self.socket_path} is overloaded ({reason}); still refused after "
                         f"{waited:.1f}s of retries")


class ProtocolError(Exception):
    """The daemon's answer is not HTTP as qasup's server speaks it."""


class StreamBroken(NoDaemon):
    """The daemon went away in the middle of a streamed answer (it ends streams cleanly on shutdown)."""


class RequestFailed(Exception):
    """A streamed request was answered with an error status; ``message`` is the daemon's error text."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


def request(
    socket_path: str | os.PathLike[str],
    method: str,
    path: str,
    body: Any = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> tuple[int, Any]:
    """Send one request and return ``(status, payload)``.

    ``body`` (any JSON value, or None for no body) is sent as JSON.  ``payload`` is the decoded
    JSON for JSON answers, else the raw bytes.  ``timeout`` bounds the connect and each read
    (None = wait as long as the daemon takes, for actions the daemon bounds itself).
    Raises ``NoDaemon`` when nothing answers, ``Overloaded`` when the daemon answers 503 for
    :data:`BUSY_RETRY_S` (a 503 means the request was not acted on, so trying again is safe), and
    ``ProtocolError`` on a garbled answer.
    """
    status, headers, data = fetch(socket_path, method, path, body, timeout)
    if headers.get("content-type", "").startswith("application/json"):
        import json

        try:
            return status, json.loads(data) if data.strip() else None
        except ValueError as exc:
            raise ProtocolError(f"the daemon sent invalid JSON: {exc}") from None
    return status, data


def fetch(
    socket_path: str | os.PathLike[str],
    method: str,
    path: str,
    body: Any = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> tuple[int, dict[str, str], bytes]:
    """Like :func:`request`, but the answer as it came: ``(status, headers, body)``, header names in lower
    case, the body not decoded."""
    with _open(socket_path, method, path, body, timeout) as exchange:
        return exchange.status, exchange.headers, exchange.read_all()


def stream_chunks(
    socket_path: str | os.PathLike[str], path: str, *, timeout: float | None = None
) -> Iterator[bytes]:
    """GET ``path`` and yield the body as it arrives, until the daemon ends it.

    Raises ``RequestFailed`` (before yielding anything) when the answer is not 2xx, ``NoDaemon``
    when nothing answers, ``Overloaded`` when it stays busy.  ``timeout`` bounds the connect and the
    wait for each chunk.
    """
    with _open(socket_path, "GET", path, None, timeout) as exchange:
        if not 200 <= exchange.status < 300:
            raise RequestFailed(exchange.status, _error_text(exchange.read_all()))
        yield from exchange.iter_body()


def stream_lines(
    socket_path: str | os.PathLike[str], path: str, *, timeout: float | None = None
) -> Iterator[bytes]:
    """Like ``stream_chunks`` but yields complete lines (with their ``\\n``); a last partial line too."""
    pending = b""
    for chunk in stream_chunks(socket_path, path, timeout=timeout):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def _open(
    socket_path: str | os.PathLike[str], method: str, path: str, body: Any, timeout: float | None
) -> _Exchange:
    """An exchange whose answer is not 503, trying again with a short back-off for :data:`BUSY_RETRY_S`."""
    started = time.monotonic()
    delay = 0.02
    while True:
        exchange = _Exchange(socket_path, method, path, body, timeout)
        if exchange.status != 503:
            return exchange
        try:
            reason = _error_text(exchange.read_all())
        except (NoDaemon, ProtocolError):
            reason = "503 Service Unavailable"
        finally:
            exchange.close()
        waited = time.monotonic() - started
        if waited >= BUSY_RETRY_S:
            raise Overloaded(socket_path, reason, waited)
        time.sleep(min(delay, BUSY_RETRY_S - waited))
        delay = min(delay * 2, 0.25)


def _error_text(data: bytes) -> str:
    import json

    try:
        payload = json.loads(data)
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return payload["error"]
    except ValueError:
        pass
    return data.decode("utf-8", "replace").strip()


def _json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value).encode("utf-8")


class _Reader:
    """Buffered reads from a connected socket: readline, read exactly, read what is there."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def readline(self, limit: int) -> bytes:
        """One line with its b"\\n"; at most ``limit`` bytes; what is left at end of stream."""
        while True:
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0:
                line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
                return line
            if len(self.buffer) >= limit or not self._fill():
                line, self.buffer = self.buffer[:limit], self.buffer[limit:]
                return line

    def read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at end of stream (pieces are joined once: large bodies stay linear)."""
        parts, have = [self.buffer], len(self.buffer)
        while have < n:
            data = self.sock.recv(min(max(n - have, 65536), 1 << 20))
            if not data:
                break
            parts.append(data)
            have += len(data)
        joined = b"".join(parts)
        self.buffer = joined[n:]
        return joined[:n]

    def read1(self, n: int) -> bytes:
        """What is buffered, else one receive; b"" at end of stream."""
        if not self.buffer:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


class _Exchange:
    """One request/response on a fresh connection; the response head is read on entry."""

    def __init__(
        self, socket_path: str | os.PathLike[str], method: str, path: str, body: Any, timeout: float | None
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.sock = _connect(socket_path, timeout)
        self.reader = _Reader(self.sock)
        self.status = 0
        self.headers: dict[str, str] = {}
        try:
            payload = b"" if body is None else _json_bytes(body)
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: qasup\r\nConnection: close\r\n"
                f"Accept: application/json\r\nUser-Agent: qasup-cli\r\n"
            )
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            try:
                self.sock.sendall(head.encode("ascii") + b"\r\n" + payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered (503 busy) and closed before reading the request: that answer is still readable
            self._read_head()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _Exchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _readline(self) -> bytes:
        try:
            line = self.reader.readline(_MAX_HEAD + 1)
        except TimeoutError:
            raise NoDaemon(self.socket_path, f"no answer within {self.timeout:g}s") from None
        except OSError as exc:
            raise NoDaemon(self.socket_path, f"connection lost: {exc.strerror or exc}") from None
        if len(line) > _MAX_HEAD:
            raise ProtocolError("the daemon sent an over-long line")
        return line

    def _read_head(self) -> None:
        status_line = self._readline()
        if not status_line:
            raise NoDaemon(self.socket_path, "the daemon closed the connection without answering")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"unexpected status line {status_line[:80]!r}")
        self.status = int(parts[1])
        total = len(status_line)
        while True:
            line = self._readline()
            total += len(line)
            if total > _MAX_HEAD:
                raise ProtocolError("the daemon sent over-long headers")
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"malformed header line {line[:80]!r}")
            self.headers[name.strip().lower()] = value.strip()

    def _read_exact(self, n: int) -> bytes:
        try:
            data = self.reader.read(n)
        except TimeoutError:
            raise NoDaemon(self.socket_path, f"no answer within {self.timeout:g}s") from None
        except OSError as exc:
            raise NoDaemon(self.socket_path, f"connection lost: {exc.strerror or exc}") from None
        if len(data) != n:
            raise StreamBroken(self.socket_path, "the connection was lost in the middle of an answer")
        return data

    def iter_body(self) -> Iterator[bytes]:
        """Yield the body in pieces as they arrive."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size_line = self._readline()
                if not size_line:
                    raise StreamBroken(self.socket_path, "the connection was lost in the middle of an answer")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {size_line[:40]!r}") from None
                if size == 0:
                    while self._readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                data = self._read_exact(size)
                self._read_exact(2)  # CRLF after the chunk
                yield data
        elif "content-length" in self.headers:
            try:
                length = int(self.headers["content-length"])
            except ValueError:
                raise ProtocolError("bad Content-Length from the daemon") from None
            if length > _MAX_BODY:
                raise ProtocolError(f"answer too large ({length} bytes)")
            if length:
                yield self._read_exact(length)
        else:
            while True:
                try:
                    data = self.reader.read1(65536)
                except TimeoutError:
                    raise NoDaemon(self.socket_path, f"no answer within {self.timeout:g}s") from None
                except OSError as exc:
                    raise NoDaemon(self.socket_path, f"connection lost: {exc.strerror or exc}") from None
                if not data:
                    return
                yield data

    def read_all(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        for piece in self.iter_body():
            total += len(piece)
            if total > _MAX_BODY:
                raise ProtocolError("answer too large")
            parts.append(piece)
        return b"".join(parts)


def _connect(socket_path: str | os.PathLike[str], timeout: float | None) -> _socket.socket:
    """Connect, retrying while the daemon's accept queue is full (EAGAIN), up to ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(socket_path))
            return sock
        except BlockingIOError:
            sock.close()
            if deadline is not None and time.monotonic() >= deadline:
                raise NoDaemon(socket_path, "the daemon's connection queue stayed full") from None
            time.sleep(0.01)
        except FileNotFoundError:
            sock.close()
            raise NoDaemon(socket_path, "the socket does not exist") from None
        except ConnectionRefusedError:
            sock.close()
            raise NoDaemon(socket_path, "connection refused: stale socket, the daemon is not running") from None
        except TimeoutError:
            sock.close()
            raise NoDaemon(socket_path, f"no answer within {timeout:g}s") from None
        except PermissionError:
            sock.close()
            raise NoDaemon(socket_path, "permission denied: the socket belongs to another user") from None
        except OSError as exc:
            sock.close()
            raise NoDaemon(socket_path, exc.strerror or str(exc)) from None
