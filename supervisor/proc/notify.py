"""sd_notify both ways. The sending side (:class:`Notifier`): qasup telling the service manager that started it (systemd ``Type=notify``, or
anything that sets ``NOTIFY_SOCKET``) how the stack is doing.

:meth:`Notifier.from_environ` takes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` out of the
environment (the services must not inherit them: a service of qasup's speaking to qasup's manager would pass for
qasup). ``@name`` is an abstract socket, as in systemd. Sending never blocks and never raises: a manager that has
gone away must not take the stack down. The receiving side (:class:`NotifySocket`): a service's own socket.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, MutableMapping

import anyio

VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

__all__ = ["VARIABLES", "NotifySocket", "Notifier", "parse_message", "socket_address"]


def socket_address(value: str) -> str | bytes:
    """``NOTIFY_SOCKET``'s value as an ``AF_UNIX`` address (``@name``: the abstract name ``\\0name``)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends datagrams to one ``NOTIFY_SOCKET``; :attr:`watchdog` is the interval in seconds at which the manager
    wants ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None."""

    def __init__(self, address: str | bytes, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        self.errors = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier | None:
        """The notifier ``environ`` asks for (default: ``os.environ``), or None; the variables are removed."""
        env = os.environ if environ is None else environ
        value = env.pop("NOTIFY_SOCKET", "")
        usec, wd_pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        if not value or not (value.startswith(("@", "/"))):
            return None
        watchdog = None
        if usec.isdigit() and int(usec) > 0 and (not wd_pid or wd_pid == str(os.getpid())):
            watchdog = int(usec) / 2e6
        return cls(socket_address(value), watchdog)

    def send(self, text: str) -> bool:
        """Send one message (``READY=1``, ``STATUS=...``); False when it could not be sent."""
        try:
            self._sock.sendto(text.encode("utf-8", "replace"), self.address)
        except OSError:
            self.errors += 1
            return False
        return True

    def close(self) -> None:
        self._sock.close()


class NotifySocket:
    """The receiving side: one service run's ``NOTIFY_SOCKET``, an abstract datagram socket with ``SO_PASSCRED``,
    so every datagram carries its sender's pid as the kernel saw it (``SCM_CREDENTIALS``).

    :meth:`serve` hands each datagram's sender pid and its ``KEY=VALUE`` fields to a callback, which decides
    whether that pid may speak for the service (see :mod:`supervisor.engine.lifetime`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sock.bind(b"\0" + name.encode())
        except OSError:
            self.sock.close()
            raise

    @property
    def variable(self) -> str:
        """The value of ``NOTIFY_SOCKET`` for the service's processes."""
        return "@" + self.name

    def receive(self) -> tuple[int | None, dict[str, str]] | None:
        """One datagram: (the sender's pid, its fields), or None when none is waiting."""
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS.size))
        except (BlockingIOError, InterruptedError):
            return None
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDS.size:
                pid = _CREDS.unpack(payload[:_CREDS.size])[0]
        return pid, parse_message(data)

    async def serve(self, on_message: Callable[[int | None, dict[str, str]], None]) -> None:
        """Hand every datagram to ``on_message`` until cancelled."""
        while True:
            await anyio.wait_readable(self.sock)
            while (got := self.receive()) is not None:
                on_message(*got)

    def close(self) -> None:
        self.sock.close()


_CREDS = struct.Struct("3i")   # struct ucred: pid, uid, gid


def parse_message(data: bytes) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of one sd_notify datagram (later keys win; lines without ``=`` are ignored)."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, eq, value = line.partition("=")
        if eq and key:
            fields[key] = value
    return fields
