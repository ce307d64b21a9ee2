"""The stack lock: one daemon per stack, held in a way that cannot be deleted from under it.

An abstract-namespace Unix socket (no file: ``rm -rf .qasup`` cannot touch it) named after the stack's real
path, ``\\0qasup:<sha256 of the realpath of the stack root>``, is bound when ``qasup up`` starts and held until
the daemon exits, however it exits (the kernel releases it with the process). A second ``up`` of the same
stack cannot bind the name; it connects instead, and the kernel tells it the holder's pid (SO_PEERCRED).
Abstract names are per network namespace: two containers that share a stack folder are not locked out.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from pathlib import Path

from supervisor.control.listen import DaemonAlreadyRunning

__all__ = ["StackLock", "lock_name"]


def lock_name(root: Path) -> bytes:
    """The abstract socket name of the stack at ``root`` (71 bytes, well within a Unix socket's 107)."""
    real = os.path.realpath(root)
    return b"\0qasup:" + _sha256_hex(os.fsencode(real)).encode()


class StackLock:
    """The held lock: :meth:`acquire` it, keep it while the stack runs, :meth:`close` it at the end.

    The socket listens, so that a second ``up`` learns the holder's pid; :meth:`drain` accepts and closes
    such probes (call it when :attr:`sock` is readable) so they never fill its backlog."""

    def __init__(self, sock: socket.socket | None, root: Path) -> None:
        self.sock = sock
        self.root = root

    @classmethod
    def acquire(cls, root: Path) -> StackLock:
        """Take the lock of the stack at ``root``; :class:`DaemonAlreadyRunning` (naming the holder's pid)
        when a live daemon holds it. Where abstract sockets do not exist the stack runs unlocked."""
        name = lock_name(root)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(name)
            sock.listen(8)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                return cls(None, root)   # e.g. not Linux: nothing to hold
            pid = holder_pid(name)
            who = f"pid {pid}" if pid else "its pid unknown"
            raise DaemonAlreadyRunning(
                f"this stack ({os.path.realpath(root)}) is already running, {who}: stop it first "
                f"(qasup shutdown, or SIGTERM to that pid) or run another stack folder") from None
        return cls(sock, root)

    def drain(self) -> int:
        """Accept and close every waiting probe (a second ``up`` asking who holds the lock); how many."""
        count = 0
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:   # nothing waiting (EAGAIN), or out of descriptors: the probe has our pid already
                return count
            conn.close()
            count += 1
        return count

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def holder_pid(name: bytes) -> int | None:
    """The pid of the process listening on the abstract socket ``name`` (None when it cannot be told)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(name)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    finally:
        probe.close()
    pid = struct.unpack("3i", creds)[0]
    return pid or None   # 0: the holder lives in a PID namespace that this one cannot see into


def _sha256_hex(data: bytes) -> str:
    """SHA-256 from the interpreter's built-in module: ``hashlib`` would load every built-in hash (and try
    OpenSSL's), about 240 KiB of resident memory for one digest at start."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found]   # Python >= 3.12
    except ImportError:
        from _sha256 import sha256  # type: ignore[import-not-found]   # Python 3.11
    return str(sha256(data).hexdigest())
