"""sd_notify from a service: its run's ``NOTIFY_SOCKET`` (``[ready] notify = true``) and what it may say there.

Each run of such a service gets an abstract datagram socket ``@qasup-<daemon id>-<service>`` (in its
environment as ``NOTIFY_SOCKET``); a datagram counts only when the kernel's credentials name a process of that
run (:func:`~supervisor.proc.tree.members`: its cgroup, group, session, descendants), so one service cannot speak
for another. What counts:

* ``READY=1``: the ``notify`` readiness check passes (combined with the others by ``[ready] mode``); after
  ``RELOADING=1`` it also ends the reload.
* ``STATUS=...``: shown by ``qasup status`` (the ``notify`` field of the status JSON).
* ``MAINPID=N``: a forking service's main process, when N is a process of the run.
* ``STOPPING=1`` / ``RELOADING=1``: shown in status.
* ``WATCHDOG=1``: the time of the last one, for ``[live] watchdog``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import field
from typing import TYPE_CHECKING

from supervisor.proc.notify import NotifySocket
from supervisor.proc.tree import members
from supervisor.readiness.probes import NotifyReady, Probe
from supervisor.records import dataclass

if TYPE_CHECKING:
    from supervisor.proc.reaper import Child

__all__ = ["RunNotify", "socket_name"]


def socket_name(daemon_id: str, service: str) -> str:
    return f"qasup-{daemon_id}-{service}"


@dataclass(eq=False)
class RunNotify:
    """What one run said on its ``NOTIFY_SOCKET``."""

    sock: NotifySocket
    service: str
    say: Callable[[str], None]
    ready: NotifyReady | None = None
    status: str | None = None          # the last STATUS=
    phase: str | None = None           # "stopping" / "reloading", as the service said
    main_pid: int | None = None        # MAINPID=, once it named a process of the run
    watchdog_at: float | None = None   # monotonic time of the last WATCHDOG=1
    messages: int = 0
    refused: set[int] = field(default_factory=set)

    @classmethod
    def open(cls, daemon_id: str, service: str, say: Callable[[str], None]) -> RunNotify:
        return cls(NotifySocket(socket_name(daemon_id, service)), service, say)

    def attach(self, probes: list[Probe]) -> None:
        self.ready = next((p for p in probes if isinstance(p, NotifyReady)), None)

    def text(self) -> str | None:
        """The status column's words: the phase and the service's STATUS=."""
        parts = [p for p in (self.phase and f"{self.phase} (sd_notify)", self.status) if p]
        return "; ".join(parts) or None

    async def serve(self, child: Child, main_pid: Callable[[], int | None]) -> None:
        def on_message(pid: int | None, fields: dict[str, str]) -> None:
            if pid is None or not (pid == main_pid() or pid in members(child)):
                if set(fields) <= {"BARRIER"}:
                    return   # systemd-notify's barrier, sent by itself after the message (it may be gone)
                if pid not in self.refused and len(self.refused) < 64:
                    self.refused.add(pid or 0)
                    self.say(f"{self.service}: sd_notify message from pid {pid}, which is not a process of "
                             f"{self.service}: ignored")
                return
            self.take(pid, fields, child)

        await self.sock.serve(on_message)

    def take(self, pid: int, fields: dict[str, str], child: Child) -> None:
        self.messages += 1
        if "STATUS" in fields:
            self.status = fields["STATUS"][:200] or None
        if fields.get("STOPPING") == "1":
            self.phase = "stopping"
        if fields.get("RELOADING") == "1":
            self.phase = "reloading"
        if fields.get("READY") == "1":
            if self.phase == "reloading":
                self.phase = None
            if self.ready is not None:
                self.ready.hit()
        if fields.get("WATCHDOG") == "1":
            self.watchdog_at = time.monotonic()
        if "MAINPID" in fields:
            value = fields["MAINPID"]
            if value.isdigit() and int(value) in members(child):
                self.main_pid = int(value)
            else:
                self.say(f"{self.service}: sd_notify MAINPID={value[:20]} is not a process of {self.service}: "
                         f"ignored")

    def close(self) -> None:
        self.sock.close()
