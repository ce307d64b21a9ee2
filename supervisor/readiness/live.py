"""``[live]``: the liveness loop of a ready service.

Every ``interval`` (counted from the start of one round to the next) a round runs the checks once each, at the
same time, bounded by ``timeout``; with ``mode = "all"`` every check must pass, with ``"any"`` one. After
``failures`` failed rounds in a row the loop reports it (``on_failed(n, why)``), at that round and at every
failed round after; a round that passes after a report is reported too (``on_recovered()``). The checks are the
probes of ``[ready]`` (:mod:`supervisor.readiness.probes`) tried once per round, and :class:`LiveLog`, which
passes when a matching line arrived since the previous round. Rounds are skipped while ``active()`` is false.
The loop runs only for a unit with ``[live]`` checks, inside its run's task group, so it ends with the run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio

from supervisor.plan.resolve import LiveChecks
from supervisor.readiness.probes import ExecRunner, build_probes

__all__ = ["Check", "LiveLog", "LiveLoop", "build_checks", "run_round"]


class Check(Protocol):
    """One liveness check: ``once()`` tries it (``last_error`` says why it failed); ``aclose()`` after a round."""

    name: str
    last_error: str | None

    async def once(self) -> bool: ...
    async def aclose(self) -> None: ...


class LiveLog:
    """``[live] log``: passes when the log scanner reported a matching line (:meth:`hit`) since the last try."""

    name = "log"

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.hits = 0
        self._seen = 0
        self.last_error: str | None = None

    def hit(self) -> None:
        self.hits += 1

    def baseline(self) -> None:
        """Count only lines from now on (the loop starts once the service is ready)."""
        self._seen = self.hits

    async def once(self) -> bool:
        fresh = self.hits != self._seen
        self._seen = self.hits
        self.last_error = None if fresh else f"no line matching {self.pattern!r} since the previous check"
        return fresh

    async def aclose(self) -> None:
        pass


def build_checks(live: LiveChecks, run_exec: ExecRunner) -> tuple[LiveLog | None, list[Check]]:
    """The checks of a unit's ``[live]`` table; the log check (if any) is also returned on its own, for the
    scanner. One try of a polled probe is bounded by the round's ``timeout``."""
    log = LiveLog(live.log) if live.log else None
    _, probes = build_probes(dataclasses.replace(live, log=None, interval=live.timeout), run_exec)
    checks: list[Check] = [log] if log is not None else []
    checks += probes   # type: ignore[arg-type]  # Polled probes have once() and aclose()
    return log, checks


async def run_round(checks: Sequence[Check], mode: str, timeout: float) -> str | None:
    """One round: None when it passed, else why not (the failing checks' reasons)."""
    results: dict[int, bool] = {}

    async def one(i: int, check: Check, scope: anyio.CancelScope) -> None:
        try:
            ok = await check.once()
        except Exception as e:   # a check must never kill the engine
            check.last_error = f"{type(e).__name__}: {e}"
            ok = False
        results[i] = ok
        if ok and mode == "any":
            scope.cancel()

    try:
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:
                for i, check in enumerate(checks):
                    tg.start_soon(one, i, check, tg.cancel_scope)
    finally:
        with anyio.CancelScope(shield=True):
            for check in checks:
                await check.aclose()
    passed = [results.get(i) is True for i in range(len(checks))]
    if (any(passed) if mode == "any" else all(passed)):
        return None
    whys = []
    for i, check in enumerate(checks):
        if i not in results:
            whys.append(f"{_what(check)}: no answer within {timeout:g}s (the [live] timeout)")
        elif not results[i]:
            whys.append(check.last_error or f"{check.name} check failed")
    return "; ".join(whys)


def _what(check: Check) -> str:
    """What a check tries, in words (``GET http://...``, ``tcp HOST:PORT``, the command)."""
    if hasattr(check, "url"):
        return f"{getattr(check, 'method', 'GET')} {check.url}"
    if hasattr(check, "port"):
        return f"tcp {getattr(check, 'host', '')}:{check.port}"
    if hasattr(check, "argv"):
        return " ".join(check.argv)
    return f"{check.name} check"


class LiveLoop:
    """Runs the rounds of one ready instance (see the module's docstring); ``await loop.run()`` until cancelled."""

    def __init__(self, live: LiveChecks, checks: Sequence[Check], *, on_failed: Callable[[int, str], None],
                 on_recovered: Callable[[], None], active: Callable[[], bool] = lambda: True,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.live = live
        self.checks = tuple(checks)
        self.on_failed, self.on_recovered, self.active = on_failed, on_recovered, active
        self.sleep, self.clock = sleep, clock
        self.in_row = 0          # failed rounds in a row
        self.reported = False    # on_failed was called in this streak
        self.rounds = 0          # rounds done

    async def run(self) -> None:
        live = self.live
        for check in self.checks:
            if isinstance(check, LiveLog):
                check.baseline()
        next_at = self.clock() + live.interval
        while True:
            await self.sleep(max(0.0, next_at - self.clock()))
            next_at = max(next_at + live.interval, self.clock())   # a slow round: the next one follows at once
            if not self.active():
                continue
            await self.round()

    async def round(self) -> None:
        """One round and its verdict."""
        why = await run_round(self.checks, self.live.mode, self.live.timeout)
        self.rounds += 1
        if why is None:
            if self.reported:
                self.on_recovered()
            self.in_row, self.reported = 0, False
            return
        self.in_row += 1
        if self.in_row >= self.live.failures:
            self.reported = True
            self.on_failed(self.in_row, why)
