"""Readiness checks: a log marker, HTTP, TCP and exec probes, combined with ``mode = "all" | "any"``.

Polled probes (:mod:`supervisor.readiness.base`) start fast and back off to the unit's ``interval``; the HTTP
probe, with its limits per try, is :mod:`supervisor.readiness.httpprobe`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from supervisor.plan.resolve import ReadyChecks
from supervisor.readiness.base import FIRST_PAUSE, GROWTH, Polled, Probe

__all__ = ["FIRST_PAUSE", "GROWTH", "ExecProbe", "LogMarker", "NotifyReady", "Polled", "Probe", "TcpProbe",
           "build_probes", "wait_ready", "why_not_ready"]

ExecRunner = Callable[[Sequence[str], float], Awaitable[int]]


class LogMarker(Probe):
    """Passes when the log scanner reports the marker (:meth:`hit` is called from the capture path)."""

    name = "log"

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.event = anyio.Event()
        self.last_error = f"no line matching {pattern!r} yet"
        self.on_pass: Callable[[], None] | None = None   # called at the first match (the run's lone check)

    def hit(self) -> None:
        if self.on_pass is not None and not self.event.is_set():
            self.on_pass()
        self.event.set()

    def settle(self) -> bool:
        """Whether ``on_pass`` reported the pass itself (then the waiter must not report it again); from now on a
        match reports nothing (it came after the wait had ended, e.g. after the time-out)."""
        reported = self.on_pass is not None and self.event.is_set()
        self.on_pass = None
        return reported

    async def wait(self) -> None:
        await self.event.wait()


class NotifyReady(Probe):
    """``[ready] notify``: passes when the service sent ``READY=1`` on its ``NOTIFY_SOCKET`` (sd_notify)."""

    name = "notify"

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.last_error = "no READY=1 on NOTIFY_SOCKET yet"

    def hit(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


class TcpProbe(Polled):
    name = "tcp"

    def __init__(self, host: str, port: int, interval: float) -> None:
        super().__init__(interval)
        self.host, self.port = host, port

    async def once(self) -> bool:
        try:
            with anyio.fail_after(max(self.interval, 1.0)):
                s = await anyio.connect_tcp(self.host, self.port)
        except (OSError, TimeoutError) as e:
            self.last_error = f"tcp {self.host}:{self.port}: {getattr(e, 'strerror', None) or e or 'timed out'}"
            return False
        await s.aclose()
        return True


class ExecProbe(Polled):
    name = "exec"

    def __init__(self, argv: Sequence[str], run: ExecRunner, interval: float) -> None:
        super().__init__(interval)
        self.argv, self.run = tuple(argv), run

    async def once(self) -> bool:
        code = await self.run(self.argv, max(self.interval, 5.0))
        if code != 0:
            self.last_error = f"{' '.join(self.argv)} exited {code}"
        return code == 0


def build_probes(checks: ReadyChecks, run_exec: ExecRunner) -> tuple[LogMarker | None, list[Probe]]:
    """The probes of a unit's ``[ready]`` table; the log marker (if any) is also returned on its own."""
    probes: list[Probe] = []
    marker = None
    if checks.log:
        marker = LogMarker(checks.log)
        probes.append(marker)
    if checks.http:
        from supervisor.readiness.httpprobe import HttpProbe  # here: only units with an HTTP check need it

        probes.append(HttpProbe(checks.http.url, checks.http.method, checks.http.expect, checks.interval))
    if checks.tcp:
        probes.append(TcpProbe(checks.tcp[0], checks.tcp[1], checks.interval))
    if checks.exec:
        probes.append(ExecProbe(checks.exec, run_exec, checks.interval))
    if checks.notify:
        probes.append(NotifyReady())
    return marker, probes


async def wait_ready(probes: Sequence[Probe], mode: str) -> None:
    """Return when all probes (``mode="all"``) or any one (``"any"``) passed. No probes: at once."""
    if not probes:
        return
    try:
        if len(probes) == 1:   # the common case (a log marker): no task group, no task, two loop turns fewer
            await probes[0].wait()
            probes[0].passed = True
        elif mode == "any":
            async with anyio.create_task_group() as tg:
                async def one(p: Probe) -> None:
                    await p.wait()
                    p.passed = True
                    tg.cancel_scope.cancel()

                for p in probes:
                    tg.start_soon(one, p)
        else:
            async with anyio.create_task_group() as tg:
                async def each(p: Probe) -> None:
                    await p.wait()
                    p.passed = True

                for p in probes:
                    tg.start_soon(each, p)
    finally:
        with anyio.CancelScope(shield=True):
            for p in probes:
                await p.aclose()


def why_not_ready(probes: Sequence[Probe]) -> str:
    return "; ".join(p.last_error for p in probes if p.last_error and not p.passed) or "not ready"
