"""The :class:`~supervisor.engine.instance.ServiceHost` of an external service: no process, no log file, no
prepare step; a run is a round of probing (see :mod:`supervisor.engine.external` for what the state machine
makes of it).

One run: resolve the unit again (env files are read at each start, so an address variable changed there is
used at the next start), then the ``[ready]`` probes (:mod:`supervisor.readiness.probes`, with their
fast-start back-off) until they pass; at ``[ready] timeout`` a ``ReadyTimeout`` is posted once and the probing
goes on with fresh probes. Once ready, the ``[live]`` loop (:mod:`supervisor.readiness.live`) runs as for a
local service. A stop (or kill) cancels the run; ``Exited`` (no exit code) ends it, as for any run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from supervisor.engine import messages as m
from supervisor.engine.host import HostContext, ProcessHost
from supervisor.engine.instance import Instance
from supervisor.engine.states import REQUESTED, ServiceState
from supervisor.errors import Problems
from supervisor.proc.kernel import SpawnError
from supervisor.proc.run import run_to_completion
from supervisor.readiness.live import Check, LiveLoop, build_checks
from supervisor.readiness.probes import ExecRunner, Probe, build_probes, wait_ready
from supervisor.records import dataclass

if TYPE_CHECKING:
    from supervisor.engine.instance import ServiceHost
    from supervisor.engine.service import Service
    from supervisor.plan.resolve import ResolvedUnit
    from supervisor.plan.result import ServicePlan

__all__ = ["STOPPED_TEXT", "ExternalHost", "ProbeRun", "describe_probe", "hosts_for"]

STOPPED_TEXT = "probing stopped"   # what the event of an external service's requested stop says


@dataclass(eq=False)
class ProbeRun:
    """The I/O side of one instance of an external service: its probes and the scope that ends them."""

    inst: Instance
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    probes: list[Probe] = field(default_factory=list)
    live_checks: list[Check] = field(default_factory=list)


def describe_probe(p: Probe) -> str:
    """What a probe tries, in words (``http GET URL``, ``tcp HOST:PORT``, ``exec ARGV``)."""
    if hasattr(p, "url"):
        return f"http {getattr(p, 'method', 'GET')} {p.url}"
    if hasattr(p, "port"):
        return f"tcp {getattr(p, 'host', '')}:{p.port}"
    if hasattr(p, "argv"):
        return "exec " + " ".join(p.argv)
    return p.name


class ExternalHost:
    """Probes one external service (see the module's docstring)."""

    external = True   # which kind of host this is (engine.external.fit_host)

    def __init__(self, svc: Service, ctx: HostContext) -> None:
        self.svc = svc
        self.ctx = ctx
        self.name = svc.name
        self.unit = svc.unit
        self.tg: anyio.abc.TaskGroup | None = None
        self.run: ProbeRun | None = None

    # ------------------------------------------------------------------ ServiceHost

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg

    def launch(self, inst: Instance) -> None:
        if self.run is not None:
            self.run.scope.cancel()   # a run replaced without a stop (a [live] failure): its probing ends
        run = self.run = ProbeRun(inst)
        inst.spawned_at = time.monotonic()   # uptime and ready_after count from the start of the probing
        assert self.tg is not None
        self.tg.start_soon(self._probe_main, run)

    def stop(self, inst: Instance, timeout: float) -> None:
        run = self._run_of(inst)
        if run is not None:
            run.scope.cancel()

    def kill(self, inst: Instance) -> None:
        self.stop(inst, 0.0)

    def start_timer(self, token: int, delay: float) -> None:
        assert self.tg is not None
        self.tg.start_soon(self._timer, token, delay)

    def live_pid(self, inst: Instance) -> int | None:
        return None

    def waiting_on(self, inst: Instance) -> str | None:
        """The probes not passed yet, each named with its last error (status ``waiting_on``, progress lines)."""
        run = self._run_of(inst)
        if run is None:
            return None
        parts = [p.last_error or f"{describe_probe(p)}: no answer yet" for p in run.probes if not p.passed]
        return "external: " + ("; ".join(parts) or "probing")

    def notify_text(self, inst: Instance) -> str | None:
        return None

    def log_line(self, text: str) -> None:
        svc = self.svc
        svc.stack.record(svc, svc.state, text)

    def replaced(self, unit: ResolvedUnit, splan: ServicePlan) -> None:
        self.unit = unit

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ one run

    def _run_of(self, inst: Instance) -> ProbeRun | None:
        run = self.run
        return run if run is not None and run.inst is inst else None

    async def _timer(self, token: int, delay: float) -> None:
        await anyio.sleep(delay)
        self.svc.post(m.BackoffDone(token))

    async def _probe_main(self, run: ProbeRun) -> None:
        failure: str | None = None
        try:
            with run.scope:
                unit, failure = self._refresh_unit(run)
                if unit is not None:
                    await self._probe(run, unit)
        except Exception as e:
            failure = f"internal error: {type(e).__name__}: {e}"
        finally:
            if self.run is run:
                self.run = None
            if failure is None and run.inst.stop_reason in REQUESTED:
                failure = STOPPED_TEXT
            self.svc.post(m.Exited(run.inst, None, failure))

    def _refresh_unit(self, run: ProbeRun) -> tuple[ResolvedUnit | None, str | None]:
        """Resolve again (env files are read at each start); it stays external whatever the resolver says."""
        probs = Problems()
        unit = self.ctx.resolve(self.svc, probs)
        if unit is None:
            return None, "; ".join(f"{p.key}: {p.message}" for p in probs.items)
        if not unit.external:
            unit = dataclasses.replace(unit, external=True)
        self.unit = unit
        self.svc.post(m.Resolved(run.inst, unit))
        return unit, None

    async def _probe(self, run: ProbeRun, unit: ResolvedUnit) -> None:
        _, run.probes = build_probes(unit.ready, self._run_exec_of(unit))
        with anyio.move_on_after(unit.ready.timeout) as scope:
            await wait_ready(run.probes, unit.ready.mode)
        if scope.cancelled_caught:
            self.svc.post(m.ReadyTimeout(run.inst, "; ".join(self._why(run.probes))))
            # the remote may come later: fresh probes (the closed ones hold no connection), for ever; they
            # start with what the last ones said, so status keeps naming why
            old = run.probes
            _, run.probes = build_probes(unit.ready, self._run_exec_of(unit))
            for new, was in zip(run.probes, old, strict=True):
                new.last_error = was.last_error
            await wait_ready(run.probes, unit.ready.mode)
        self.svc.post(m.Ready(run.inst))
        if unit.live is not None:
            _, run.live_checks = build_checks(unit.live, self._run_exec_of(unit))
            if run.live_checks:
                inst, post = run.inst, self.svc.post
                loop = LiveLoop(unit.live, run.live_checks, active=lambda: self._active(inst),
                                on_failed=lambda n, why: post(m.LiveFailed(inst, n, why)),
                                on_recovered=lambda: post(m.LiveRecovered(inst)))
                await loop.run()
        await anyio.sleep_forever()   # ready, nothing more to try: until it is stopped

    def _why(self, probes: Sequence[Probe]) -> list[str]:
        return [p.last_error or f"{describe_probe(p)}: no answer" for p in probes if not p.passed] or ["not ready"]

    def _active(self, inst: Instance) -> bool:
        svc = self.svc
        return svc.inst is inst and svc.state == ServiceState.READY and not inst.terminating

    def _run_exec_of(self, unit: ResolvedUnit) -> ExecRunner:
        async def run_exec(argv: Sequence[str], timeout: float) -> int:
            try:
                code, _ = await run_to_completion(self.ctx.reaper, argv, cwd=unit.cwd,
                                                  env=self.ctx.environment(unit), timeout=timeout,
                                                  tag=f"{self.name}.probe", pdeathsig=False)
                return code
            except SpawnError as e:
                raise RuntimeError(str(e)) from None
            except TimeoutError:
                return 124
        return run_exec



def hosts_for(ctx: HostContext) -> Callable[[Service], ServiceHost]:
    """The engine's host factory: a :class:`ProcessHost` for a local service, an :class:`ExternalHost` for an
    external one (chosen again at a launch after a reload changed which it is: ``external.fit_host``)."""
    def make(svc: Service) -> ServiceHost:
        return ExternalHost(svc, ctx) if svc.unit.external else ProcessHost(svc, ctx)
    return make
