"""Where the control API listens: the Unix socket (mode 0600, never replacing a live daemon's), the
optional TCP listener (only with a long enough bearer token), and removing our socket file on exit.

Plain blocking ``socket`` calls, done once at start-up (:func:`bind_api`, before any service starts, so
that a clash is reported before anything runs); the sockets are handed to anyio listeners by
``supervisor.control.server`` (which ``qasup up`` imports only once its first services are spawned). Failures are :class:`ListenError` (or :class:`DaemonAlreadyRunning`) with a
message for a person.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from supervisor.protocol import MIN_TOKEN_LENGTH, TOKEN_ENV

__all__ = [
    "SOCKET_CHECK_EVERY",
    "BoundSockets",
    "DaemonAlreadyRunning",
    "ListenError",
    "bind_api",
    "bind_tcp_socket",
    "bind_unix_socket",
    "remove_our_socket",
    "require_token",
]

_BACKLOG = 512  # a full Unix-socket backlog makes clients with a time-out fail at once (EAGAIN)

SOCKET_CHECK_EVERY = 1.0
"""Seconds between two looks (one ``stat``) at the socket file: gone (``rm -rf .qasup``) means bound anew."""


class DaemonAlreadyRunning(RuntimeError):
    """A live daemon already answers on the socket path we were asked to serve on."""


class ListenError(RuntimeError):
    """The API cannot listen where it was asked to (bad socket path, TCP listener without a token, ...)."""


def require_token(listen: tuple[str, int], token: str | None) -> None:
    """ListenError unless ``token`` is fit to guard a TCP listener (at least MIN_TOKEN_LENGTH characters)."""
    if not token or len(token) < MIN_TOKEN_LENGTH:
        raise ListenError(
            f"--listen {listen[0]}:{listen[1]} needs {TOKEN_ENV} set to a secret of at least "
            f"{MIN_TOKEN_LENGTH} characters (clients send it as 'Authorization: Bearer TOKEN')"
        )


def bind_unix_socket(path: Path) -> socket.socket:
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


def bind_tcp_socket(listen: tuple[str, int], what: str = "--listen") -> socket.socket:
    """Bind and listen on ``(host, port)`` (port 0: any free one), non-blocking; ``what`` names the option in
    messages."""
    host, port = listen
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"{what} {host}:{port}: {exc.strerror}") from None
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"{what} {host}:{port}: cannot listen there: {exc.strerror or exc}") from None
    return sock


def remove_our_socket(path: Path, inode: int) -> None:
    """Unlink the socket file unless another daemon has replaced it in the meantime."""
    try:
        if os.lstat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass


class BoundSockets:
    """The API's sockets, bound and listening (connections wait in the backlog until the server accepts):
    the Unix socket (its file's inode, to remove only our own file), the ``--listen`` and ``--http`` ones.
    :func:`supervisor.control.server.serve` takes them over (``taken``); until then :meth:`close` closes
    them and removes the socket file."""

    __slots__ = ("http", "inode", "path", "taken", "tcp", "unix")

    def __init__(self, path: Path, unix: socket.socket, inode: int, tcp: socket.socket | None,
                 http: socket.socket | None) -> None:
        self.path = path
        self.unix = unix
        self.inode = inode
        self.tcp = tcp
        self.http = http
        self.taken = False

    def close(self) -> None:
        """Close what the server has not taken over, and remove our socket file (once)."""
        if self.taken:
            return
        self.taken = True
        for sock in (self.unix, self.tcp, self.http):
            if sock is not None:
                sock.close()
        remove_our_socket(self.path, self.inode)


def bind_api(path: Path, *, listen: tuple[str, int] | None = None, token: str | None = None,
             http: tuple[str, int] | None = None) -> BoundSockets:
    """Every socket of the API, bound and listening: the Unix socket at ``path``, the token-protected
    ``listen`` one, the read-only ``http`` one. Raises :class:`ListenError` (no token for ``listen``, a
    socket that cannot be made) or :class:`DaemonAlreadyRunning`, having closed what it had bound."""
    if listen is not None:
        require_token(listen, token)
    unix = bind_unix_socket(path)
    bound = BoundSockets(path, unix, -1, None, None)
    try:
        bound.inode = os.stat(path).st_ino
        if listen is not None:
            bound.tcp = bind_tcp_socket(listen)
        if http is not None:
            bound.http = bind_tcp_socket(http, "--http")
    except BaseException:
        bound.close()
        raise
    return bound
