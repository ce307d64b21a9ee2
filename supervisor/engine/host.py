"""The real :class:`~supervisor.engine.instance.ServiceHost`: runs a service's processes and reads their output.

One run: resolve the unit again (env files are read at each start), check required paths, prepare (skipped when
``when_changed`` contents did not change), follow the tailed files, spawn; then :mod:`supervisor.engine.lifetime`
captures the output into the log file, the scanner and the echo, probes readiness and liveness, follows a forking
service's daemon, and waits for the exit with the pipe drained and no process left. Each outcome is posted to the
service's mailbox; the state machine decides what it means. The log file holds the service's bytes only: qasup's
own words about it (rule reports, prepare) go to qasup's output and the events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from supervisor.engine import messages as m
from supervisor.engine.context import HostContext, environment_with
from supervisor.engine.instance import Instance
from supervisor.engine.lifetime import DRAIN_AFTER_EXIT, Lifetime, Run, stop_run
from supervisor.engine.prepare import run_prepare
from supervisor.engine.sdnotify import RunNotify
from supervisor.errors import Problems
from supervisor.logs.capture import make_pipe
from supervisor.logs.follow import follow
from supervisor.logs.rotate import LogError, RotatingFile
from supervisor.logs.scan import LineScanner, PatternSet
from supervisor.proc.kernel import SpawnError, fd_shortage, out_of_fds, out_of_fds_text, with_fds_text
from supervisor.proc.run import run_to_completion
from supervisor.proc.spawn import unit_credentials
from supervisor.proc.stop import kill_tree
from supervisor.readiness.live import build_checks
from supervisor.readiness.probes import build_probes, why_not_ready

if TYPE_CHECKING:
    from supervisor.engine.service import Service
    from supervisor.plan.resolve import ResolvedUnit
    from supervisor.plan.result import ServicePlan

class ProcessHost:
    """Runs one service's processes (see the module's docstring)."""
    external = False   # which kind of host this is (engine.external.fit_host; the other: engine.externalhost)

    def __init__(self, svc: Service, ctx: HostContext) -> None:
        self.svc = svc
        self.ctx = ctx
        self.name = svc.name
        self.unit = svc.unit   # the latest resolved unit (the state machine learns of it by a message)
        self.tg: anyio.abc.TaskGroup | None = None
        self.run: Run | None = None
        self.patterns: PatternSet | None = None
        self.pattern_key: tuple[str, ...] | None = None
        self.logfile: RotatingFile | None = None
        self._setup_patterns(svc.unit)

    # ------------------------------------------------------------------ ServiceHost

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg

    def launch(self, inst: Instance) -> None:
        run = self.run = Run(inst)
        assert self.tg is not None
        if self.unit.prepare_argv or self.unit.tail:   # may wait long before the spawn: not behind the gate
            self.tg.start_soon(self._instance_main, run, False)
        else:
            run.queued = partial(self._start_gated, run)
            self.ctx.gate.enter(run.queued)

    def _start_gated(self, run: Run, gated: bool = True) -> None:
        run.queued = None
        assert self.tg is not None
        self.tg.start_soon(self._instance_main, run, gated)

    def stop(self, inst: Instance, timeout: float) -> None:
        run = self._run_of(inst)
        if run is None:
            return
        if run.child is None:   # not spawned yet: it never is; a prepare step is cancelled (its tree terminated)
            self._cancel(run)
        else:
            assert self.tg is not None
            stop = self.unit.spec.stop
            self.tg.start_soon(stop_run, run, stop.signal, timeout, stop.mode)

    def kill(self, inst: Instance) -> None:
        run = self._run_of(inst)
        if run is None:
            return
        if run.child is not None:
            kill_tree(run.child, run.main)
        else:
            self._cancel(run)

    def _cancel(self, run: Run) -> None:
        """A stop before the spawn: the run ends without starting its process, at once (not after its turn)."""
        run.cancelled = True
        if run.scope is not None:
            run.scope.cancel()
        if run.queued is not None and self.ctx.gate.withdraw(run.queued):
            self._start_gated(run, False)

    def start_timer(self, token: int, delay: float) -> None:
        assert self.tg is not None
        self.tg.start_soon(self._timer, token, delay)

    def live_pid(self, inst: Instance) -> int | None:
        run = self._run_of(inst)
        return None if run is None else run.main_pid()

    def waiting_on(self, inst: Instance) -> str | None:
        """Why the run is not ready yet, in its probes' own words (for progress lines and status)."""
        run = self._run_of(inst)
        if run is None or run.child is None:
            return None
        if run.main_known is not None and not run.main_known.is_set():
            return "the daemon is not known yet" + (f" (pid_file {self.unit.pid_file})"
                                                    if self.unit.pid_file else "")
        return why_not_ready(run.probes) if run.probes else None

    def notify_text(self, inst: Instance) -> str | None:
        """What the run said by sd_notify (STATUS=, STOPPING=1, RELOADING=1), for status."""
        run = self._run_of(inst)
        return run.notify.text() if run is not None and run.notify is not None else None

    def log_line(self, text: str) -> None:
        """qasup's own words about the service go to its events (never into the service's log file)."""
        svc = self.svc
        svc.stack.record(svc, svc.state, text)

    def _tell(self, text: str) -> None:
        """Say ``text`` about the service on qasup's output (never in the service's log file)."""
        self.ctx.say(f"{self.name}: {text}")

    def replaced(self, unit: ResolvedUnit, splan: ServicePlan) -> None:
        self.unit = unit
        self._setup_patterns(unit)
        if self.logfile is not None and self.logfile.path != unit.log_file:
            self.logfile.close()
            self.logfile = None

    def close(self) -> None:
        if self.logfile is not None:
            self.logfile.close()

    # ------------------------------------------------------------------ one run

    def _run_of(self, inst: Instance) -> Run | None:
        run = self.run
        return run if run is not None and run.inst is inst else None

    async def _timer(self, token: int, delay: float) -> None:
        await anyio.sleep(delay)
        self.svc.post(m.BackoffDone(token))

    async def _instance_main(self, run: Run, gated: bool) -> None:
        code: int | None = None
        failure: str | None = None
        parked = False
        try:
            unit, failure = self._refresh_unit(run)
            if gated and (unit.prepare_argv or unit.tail):   # came with a reload: these do not hold the gate
                gated = False
                self.ctx.gate.leave()
            if failure is None and unit.prepare_argv:
                scope = run.scope = anyio.CancelScope()   # a cancel scope only while there is a prepare step
                if run.cancelled:
                    scope.cancel()
                with scope:
                    failure = await self._prepare(unit)
                run.scope = None
            if failure is None and not run.cancelled:
                # from here on a stop terminates the process instead of cancelling (see ServiceHost.stop); the
                # process part is called from here, not through helpers: each coroutine of the chain a running
                # service waits in costs memory (a stack holds hundreds)
                with anyio.CancelScope(shield=True):
                    if unit.tail:
                        code, failure = await self._with_followers(run, unit)
                    else:
                        try:
                            failure = await self._spawn(run, unit)
                        finally:
                            if gated:
                                gated = False
                                self.ctx.gate.leave()
                    if failure is None and not unit.tail:
                        ended = await self._lifetime(run, unit, park=True).supervise()
                        if ended is None:   # parked: the run's Lifetime ends it later (Lifetime._park)
                            parked = True
                        else:
                            code, failure = ended
            elif failure is None:
                failure = "cancelled before start"
        except Exception as e:
            failure = f"internal error: {type(e).__name__}: {e}"
        finally:
            if gated:
                self.ctx.gate.leave()
            if not parked:
                self._ended(run, code, failure)

    def _ended(self, run: Run, code: int | None, failure: str | None) -> None:
        if run.notify is not None:
            run.notify.close()
        self.svc.post(m.Exited(run.inst, code, failure))

    def _refresh_unit(self, run: Run) -> tuple[ResolvedUnit, str | None]:
        """Resolve again (env files are read at each start) and check required paths."""
        probs = Problems()
        unit = self.ctx.resolve(self.svc, probs)
        if unit is None:
            return self.unit, "; ".join(f"{p.key}: {p.message}" for p in probs.items)
        unit = self.unit if unit == self.unit else unit   # unchanged: keep one copy (a full environment each)
        self.unit = unit
        self._setup_patterns(unit)
        self.svc.post(m.Resolved(run.inst, unit))
        missing = [str(p) for p in unit.requires_paths if not p.exists()]
        if missing:
            return unit, "missing required paths: " + ", ".join(missing)
        return unit, None

    def _setup_patterns(self, unit: ResolvedUnit) -> None:
        live_log = unit.live.log if unit.live is not None else None
        pats = (tuple(r.match for r in unit.rules) + ((unit.ready.log,) if unit.ready.log else ())
                + ((live_log,) if live_log else ()))
        if pats != self.pattern_key:
            self.patterns = PatternSet(pats) if pats else None
            self.pattern_key = pats

    async def _prepare(self, unit: ResolvedUnit) -> str | None:
        ctx = self.ctx
        return await run_prepare(unit, reaper=ctx.reaper, stamp=ctx.state_dir / "prepare" / f"{self.name}.hash",
                                 env=ctx.environment(unit), write_log=self._write_log, tell=self._tell)

    async def _with_followers(self, run: Run, unit: ResolvedUnit) -> tuple[int | None, str | None]:
        """Follow the tailed files from their current end, then spawn and supervise.

        Followers start before the process so that nothing it writes is missed, and from the end so that a
        marker left in the file by an earlier run never counts for this one."""
        async with anyio.create_task_group() as tg:
            attached = []
            for path in unit.tail:
                tscan = self._scanner(run, unit)
                if tscan is not None:
                    ev = anyio.Event()
                    tg.start_soon(self._follow, path, tscan, ev)
                    attached.append(ev)
            with anyio.move_on_after(2.0):
                for ev in attached:
                    await ev.wait()
            result = await self._spawn_and_supervise(run, unit)
            tg.cancel_scope.cancel()
        return result

    async def _spawn_and_supervise(self, run: Run, unit: ResolvedUnit) -> tuple[int | None, str | None]:
        failure = await self._spawn(run, unit)
        if failure is not None:
            return None, failure
        ended = await self._lifetime(run, unit).supervise()   # not parked: the followers go on meanwhile
        assert ended is not None
        return ended

    async def _spawn(self, run: Run, unit: ResolvedUnit) -> str | None:
        if (shortage := fd_shortage()) is not None:   # out of descriptors: fail, leaving qasup enough to go on
            return shortage
        try:
            self._open_log(unit)
        except LogError as e:
            return with_fds_text(str(e), e) if out_of_fds(e) else str(e)
        try:
            read_fd, write_fd = make_pipe()
        except OSError as e:
            return f"cannot start: {out_of_fds_text(e) if out_of_fds(e) else e} (the output pipe)"
        try:
            def run_exec(argv: Sequence[str], timeout: float) -> Awaitable[int]:
                return self._run_exec(unit, argv, timeout)

            run.marker, run.probes = build_probes(unit.ready, run_exec)
            if run.marker is not None and len(run.probes) == 1 and unit.spec.type != "forking":
                run.marker.on_pass = partial(self.svc.post, m.Ready(run.inst))   # ready at the match: a turn sooner
            env = self.ctx.environment(unit)
            if unit.ready.notify:   # sd_notify: the run's own NOTIFY_SOCKET
                try:
                    run.notify = RunNotify.open(self.ctx.daemon_id, self.name, self.ctx.say)
                except OSError as e:
                    raise SpawnError(f"cannot make its NOTIFY_SOCKET: {e.strerror or e}") from None
                run.notify.attach(run.probes)
                env["NOTIFY_SOCKET"] = run.notify.sock.variable
                if unit.live is not None and unit.live.watchdog:   # how often it is to send WATCHDOG=1
                    env["WATCHDOG_USEC"] = str(int(unit.live.watchdog * 1e6))
            if unit.live is not None:   # [live]: its checks and loop exist only for units that have one
                run.live_log, run.live_checks = build_checks(unit.live, run_exec)
            # taken before the spawn: the child cannot be older than this, so ready_after_s never comes out
            # shorter than what the service itself waited (the daemon may be descheduled after the fork)
            spawned_at = time.monotonic()
            # no PDEATHSIG: the guardian kills the whole stack if qasup dies, and a preexec hook would
            # make Popen fork the daemon instead of vfork (~15 ms per spawn); in a worker thread, so that
            # the loop goes on while the child gets to exec (see Reaper.spawn_async)
            run.child = await self.ctx.reaper.spawn_async(
                unit.argv, cwd=unit.cwd, env=env, stdout=write_fd, stderr=write_fd,
                tag=self.name, credentials=unit_credentials(unit))
        except BaseException as e:
            os.close(read_fd)
            if isinstance(e, SpawnError):
                return str(e)
            raise
        finally:
            os.close(write_fd)
        run.inst.pid = run.child.pid
        run.inst.spawned_at = spawned_at
        run.read_fd = read_fd
        self.svc.post(m.Spawned(run.inst))
        return None

    def _lifetime(self, run: Run, unit: ResolvedUnit, park: bool = False) -> Lifetime:
        """Capture output into the log file, the scanner and the echo; the rest is the run's :class:`Lifetime`
        (``park``: it may wait with no task of its own, and then ends the run itself, as :meth:`_ended`)."""
        scanner = self._scanner(run, unit)
        sinks: list[Callable[[bytes], None]] = [self._write_log]
        flushes: list[Callable[[], None]] = []
        if scanner is not None:
            sinks.append(scanner.feed)
            flushes.append(scanner.flush)
        if self.ctx.echo is not None:
            es = self.ctx.echo.line_writer(self.name)
            sinks.append(es.write)
            flushes.append(es.flush)
        return Lifetime(self.svc, run, unit, sinks=sinks, flushes=flushes, say=self.ctx.say,
                        tg=self.tg if park else None, on_end=partial(self._ended, run) if park else None)

    async def _follow(self, path: Path, scanner: LineScanner, started: anyio.Event) -> None:
        try:
            await follow(path, scanner.feed, from_end=True, started=started)
        except Exception as e:
            self.ctx.say(f"{self.name}: cannot follow {path}: {e}")
        finally:
            started.set()

    def _scanner(self, run: Run, unit: ResolvedUnit) -> LineScanner | None:
        if self.patterns is None:
            return None
        n_rules = len(unit.rules)
        ready_id = n_rules if unit.ready.log else -1   # pattern ids: the rules, the ready marker, the live log
        context = max((r.context for r in unit.rules), default=0)
        post = self.svc.post
        inst = run.inst

        def on_match(pid: int, line: bytes, before: list[bytes]) -> None:
            if pid < n_rules:
                post(m.RuleHit(inst, pid, line, before))
            elif pid == ready_id:
                if run.marker is not None:
                    run.marker.hit()
            elif run.live_log is not None:
                run.live_log.hit()

        return LineScanner(self.patterns, on_match, context_lines=context)

    async def _run_exec(self, unit: ResolvedUnit, argv: Sequence[str], timeout: float) -> int:
        try:
            code, _ = await run_to_completion(self.ctx.reaper, argv, cwd=unit.cwd,
                                                      env=self.ctx.environment(unit), timeout=timeout,
                                                      tag=f"{self.name}.probe", pdeathsig=False,
                                                      credentials=unit_credentials(unit))
            return code
        except SpawnError as e:
            raise RuntimeError(str(e)) from None
        except TimeoutError:
            return 124

    # ------------------------------------------------------------------ the log file

    def _open_log(self, unit: ResolvedUnit) -> None:
        if self.logfile is None or self.logfile.path != unit.log_file:
            if self.logfile is not None:
                self.logfile.close()
            log = unit.spec.log
            self.logfile = RotatingFile(unit.log_file, log.max_bytes, log.backups, on_problem=self._tell,
                                        counts=self.svc.counters.log)

    def _write_log(self, data: bytes) -> None:
        if self.logfile is None:
            try:
                self._open_log(self.unit)
            except LogError:
                return
        assert self.logfile is not None
        self.logfile.write(data)


__all__ = ["DRAIN_AFTER_EXIT", "HostContext", "ProcessHost", "environment_with"]
