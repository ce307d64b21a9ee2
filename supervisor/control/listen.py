"""Where the control API listens: the Unix socket (mode 0600, never replacing a live daemon's), the
optional TCP listener (only with a long enough bearer token), and removing our socket file on exit.

Plain blocking ``socket`` calls, done once at start-up; the sockets are handed to anyio listeners by
``supervisor.control.server``. Failures are :class:`ListenError` (or :class:`DaemonAlreadyRunning`) with a
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
    "DaemonAlreadyRunning",
    "ListenError",
    "bind_tcp_socket",
    "bind_unix_socket",
    "remove_our_socket",
    "require_token",
]

_BACKLOG = 512  # a full Unix-socket backlog makes clients with a time-out fail at once (EAGAIN)


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
