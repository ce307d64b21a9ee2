"""The supervision engine: starts services as soon as what they need is ready, watches them, restarts them
with back-off, acts on error lines, and stops everything in reverse dependency order.

Each service has one runner task and one mailbox. Everything that happens to a service (its process
started, became ready, printed an error line, exited; a user asked to stop it; a neighbour changed state)
is a message in that mailbox, handled one at a time by the runner: no two tasks ever race on a
service's state. Slow work (prepare, spawning, readiness probes, stopping) runs in helper tasks that post
their outcome back as messages.

The engine knows nothing of the control API or the CLI: it offers methods (``status``, ``start``, ``stop``,
``restart``, ``subscribe_events``, ``reload``, ``shutdown``) that :mod:`supervisor.daemon` exposes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from supervisor.proc import contenthash
from supervisor.config import dotenv
from supervisor.logs import core as logs
from supervisor.proc import process
from supervisor.engine.errors import ReloadRejected
from supervisor.errors import Problems
from supervisor.plan.build import Plan, ServicePlan, mask
from supervisor.readiness.probes import LogMarker, build_probes, wait_ready, why_not_ready
from supervisor.plan.resolve import ResolvedUnit, resolve_unit

# Service states (interface.md).
DISABLED, WAITING, PREPARING, STARTING, READY = "disabled", "waiting", "preparing", "starting", "ready"
BACKOFF, STOPPING, STOPPED, FAILED = "backoff", "stopping", "stopped", "failed"
RUNNING_STATES = (PREPARING, STARTING, READY, STOPPING)

DRAIN_AFTER_EXIT = 2.0   # seconds to wait for the pipe's EOF after the leader exited, before killing leftovers
DAEMON_VARIABLE = "QASUP_DAEMON"   # set in every process qasup starts: its guardian kills them if qasup is killed


class EngineError(Exception):
    """A control request the engine refuses; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Instance:
    """One run of a service's process (prepare, spawn, readiness, exit)."""

    number: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    child: process.Child | None = None
    spawned_at: float | None = None
    ready_at: float | None = None
    marker: LogMarker | None = None
    probes: list = field(default_factory=list)   # readiness probes of this run
    read_fd: int = -1                            # read end of the output pipe
    stop_reason: str | None = None      # user | shutdown | restart | dep-wait | dep-fail | rule-fail |
                                        # rule-restart | ready-timeout | reload
    failure: str | None = None          # why this run counts as failed
    terminating: bool = False


class Mailbox:
    """A service's messages in arrival order, read by its runner alone (lighter than a memory object stream:
    a stack holds one per service)."""

    __slots__ = ("_items", "_waiter", "_closed")

    def __init__(self) -> None:
        self._items: deque[tuple] = deque()
        self._waiter: anyio.Event | None = None
        self._closed = False

    def put(self, msg: tuple) -> None:
        if self._closed:
            return
        self._items.append(msg)
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    async def get(self) -> tuple:
        await anyio.lowlevel.checkpoint()   # one message at a time, others run in between
        while not self._items:
            self._waiter = anyio.Event()
            await self._waiter.wait()
        return self._items.popleft()

    def close(self) -> None:
        self._closed = True
        self._items.clear()


class Service:
    """Runtime state of one service and its runner (the only code that changes that state)."""

    def __init__(self, engine: Engine, unit: ResolvedUnit, splan: ServicePlan) -> None:
        self.engine = engine
        self.name = unit.name
        self.unit = unit
        self.splan = splan
        self.state = WAITING if splan.enabled else DISABLED
        self.mailbox = Mailbox()
        self.held: str | None = None          # "user": stopped by a user; "failed": failed by itself
        self.restarts = 0
        self.restart_times: deque[float] = deque()
        self.delay = unit.spec.restart.delay
        self.backoff_token = 0
        self.inst: Instance | None = None
        self.instances = 0
        self.exit_code: int | None = None
        self.last_error: str | None = None
        self.ready_after: float | None = None
        self.state_since = time.monotonic()
        self.rule_hits: list[deque[float]] = []
        self.patterns: logs.PatternSet | None = None
        self.pattern_key: tuple[str, ...] | None = None
        self.logfile: logs.RotatingFile | None = None
        # made only when someone waits (two events per service add up in a stack of hundreds)
        self._finished: anyio.Event | None = None
        self._changed: anyio.Event | None = None
        self.done = False                     # the runner has returned
        self.removed = False
        self._setup_patterns()

    # ------------------------------------------------------------------ helpers

    @property
    def spec(self):
        return self.unit.spec

    @property
    def changed(self) -> anyio.Event:
        """Set at the next state change (a new event after each)."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    @property
    def finished(self) -> anyio.Event:
        """Set once the runner has returned."""
        if self._finished is None:
            self._finished = anyio.Event()
            if self.done:
                self._finished.set()
        return self._finished

    def post(self, *msg: Any) -> None:
        self.mailbox.put(msg)

    def _setup_patterns(self) -> None:
        pats = tuple(r.match for r in self.unit.rules) + ((self.unit.ready.log,) if self.unit.ready.log else ())
        if pats != self.pattern_key:
            self.patterns = logs.PatternSet(pats) if pats else None
            self.pattern_key = pats
        self.rule_hits = [deque() for _ in self.unit.rules]

    def set_state(self, state: str, message: str | None = None) -> None:
        if state == self.state and message is None:
            return
        prev, self.state = self.state, state
        self.state_since = time.monotonic()
        self.engine.record(self, prev, message)
        ev, self._changed = self._changed, None
        if ev is not None:
            ev.set()
        self.engine.poke_neighbours(self.name)

    def running(self) -> bool:
        return self.inst is not None

    def process_env(self, unit: ResolvedUnit) -> dict[str, str]:
        """The unit's environment plus this daemon's id (found in /proc by the guardian, see daemon.py)."""
        return {**unit.env, DAEMON_VARIABLE: self.engine.daemon_id}

    # ------------------------------------------------------------------ the runner

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self.tg = tg
            self.post("poke")
            try:
                while True:
                    msg = await self.mailbox.get()
                    try:
                        self.handle(msg)
                    except Exception as e:  # a bug must not take the stack down silently
                        self.engine.say(f"{self.name}: internal error handling {msg[0]}: {type(e).__name__}: {e}")
                    if self.engine.shutting_down and self.inst is None and self.state != STOPPING:
                        break
                    if self.removed and self.inst is None:
                        break
            finally:
                self.mailbox.close()   # later messages are dropped
            tg.cancel_scope.cancel()
        self.done = True
        if self._finished is not None:
            self._finished.set()

    def handle(self, msg: tuple) -> None:
        kind = msg[0]
        inst = msg[1] if len(msg) > 1 and isinstance(msg[1], Instance) else None
        if inst is not None and inst is not self.inst:
            return  # a message from an earlier run
        getattr(self, f"_on_{kind.replace('-', '_')}")(*msg[1:])

    def _on_poke(self) -> None:
        self.evaluate()

    def evaluate(self) -> None:
        """Decide what to do now: start, keep waiting, fail because of a dependency, or stop for one."""
        eng = self.engine
        if self.state == DISABLED and not self.removed:
            return
        if eng.shutting_down or self.removed:
            if self.inst is None:
                if self.state not in (FAILED, DISABLED):
                    self.set_state(STOPPED)
                return
            if not self.inst.terminating and not eng.dependents_running(self.name):
                self.begin_stop("shutdown" if eng.shutting_down else "reload")
            return
        if self.inst is not None:
            if self.inst.terminating:
                return
            for d in eng.graph.requires.get(self.name, ()):
                dep = eng.services[d]
                if dep.state == FAILED:
                    self.last_error = f"requires {d}, which failed"
                    self.begin_stop("dep-fail")
                    return
                if dep.held == "user":
                    self.begin_stop("dep-wait")
                    return
            return
        if self.state == BACKOFF or self.held is not None:
            return
        verdict, why = eng.deps_verdict(self.name)
        if verdict == "fail":
            self.last_error = why
            if self.state != FAILED:
                self.set_state(FAILED, why)
        elif verdict == "wait":
            if self.state != WAITING:
                self.set_state(WAITING, why)
        else:
            self.launch()

    # ------------------------------------------------------------------ start

    def launch(self) -> None:
        self.instances += 1
        inst = Instance(self.instances)
        self.inst = inst
        self.exit_code = None
        self.set_state(PREPARING if self.spec.prepare else STARTING)
        self.tg.start_soon(self._instance_main, inst)

    async def _instance_main(self, inst: Instance) -> None:
        code: int | None = None
        failure: str | None = None
        try:
            with inst.scope:
                unit, failure = self._refresh_unit()
                if failure is None and unit.prepare_argv:
                    failure = await self._prepare(unit)
            if failure is None and not inst.scope.cancel_called:
                # from here on a stop terminates the process instead of cancelling (see _on_spawned)
                with anyio.CancelScope(shield=True):
                    code, failure = await self._run_process(inst, unit)
            elif failure is None:
                failure = "cancelled before start"
        except Exception as e:
            failure = f"internal error: {type(e).__name__}: {e}"
        finally:
            self.post("exit", inst, code, failure)

    def _refresh_unit(self) -> tuple[ResolvedUnit, str | None]:
        """Resolve again (env files are read at each start) and check required paths."""
        eng = self.engine
        probs = Problems()
        unit = resolve_unit(eng.stack, self.spec, eng.plan_env, self.splan.env, probs, eng.environ,
                            pending_env_file=eng.plan.env)
        if unit is None:
            return self.unit, "; ".join(f"{p.key}: {p.message}" for p in probs.items)
        self.unit = unit
        self._setup_patterns()
        missing = [str(p) for p in unit.requires_paths if not p.exists()]
        if missing:
            return unit, "missing required paths: " + ", ".join(missing)
        return unit, None

    async def _prepare(self, unit: ResolvedUnit) -> str | None:
        eng = self.engine
        spec = self.spec.prepare
        assert spec is not None and unit.prepare_argv is not None
        stamp = eng.state_dir / "prepare" / f"{self.name}.hash"
        digest = None
        if unit.prepare_paths:
            digest = await anyio.to_thread.run_sync(contenthash.hash_paths, list(unit.prepare_paths))
            try:
                if stamp.read_text().strip() == digest:
                    self.log_line(f"prepare skipped: {', '.join(map(str, unit.prepare_paths))} unchanged")
                    return None
            except OSError:
                pass
        self.log_line(f"prepare: {' '.join(unit.prepare_argv)}")
        try:
            code, out = await process.run_to_completion(
                eng.reaper, unit.prepare_argv, cwd=unit.cwd, env=self.process_env(unit), timeout=spec.timeout,
                tag=f"{self.name}.prepare", pdeathsig=False)
        except process.SpawnError as e:
            return f"prepare failed: {e}"
        except TimeoutError as e:
            out = getattr(e, "output", b"")
            self._write_log(out)
            return f"prepare did not finish within {spec.timeout:g}s"
        self._write_log(out)
        if code != 0:
            last = out.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            return f"prepare exited {code}: {last[0][:200]}"
        if digest is not None:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            tmp = stamp.with_suffix(".tmp")
            tmp.write_text(digest + "\n")
            os.replace(tmp, stamp)
        return None

    async def _spawn(self, inst: Instance, unit: ResolvedUnit) -> str | None:
        try:
            self.open_log()
        except logs.LogError as e:
            return str(e)
        read_fd, write_fd = logs.make_pipe()
        try:
            marker, probes = build_probes(unit.ready, self._run_exec)
            inst.marker = marker
            inst.probes = probes
            # taken before the spawn: the child cannot be older than this, so ready_after_s never comes out
            # shorter than what the service itself waited (the daemon may be descheduled after the fork)
            spawned_at = time.monotonic()
            try:
                # no PDEATHSIG: the guardian (daemon.py) kills the whole stack if qasup dies, and a preexec
                # hook would make Popen fork the daemon instead of vfork (~15 ms per spawn); in a worker
                # thread, so that the loop goes on while the child gets to exec (see Reaper.spawn_async)
                inst.child = await self.engine.reaper.spawn_async(
                    unit.argv, cwd=unit.cwd, env=self.process_env(unit), stdout=write_fd, stderr=write_fd,
                    tag=self.name)
            except process.SpawnError as e:
                os.close(read_fd)
                return str(e)
        finally:
            os.close(write_fd)
        inst.spawned_at = spawned_at
        inst.read_fd = read_fd
        self.post("spawned", inst)
        return None

    async def _run_process(self, inst: Instance, unit: ResolvedUnit) -> tuple[int | None, str | None]:
        """Follow the tailed files from their current end, then spawn and supervise.

        Followers start before the process so that nothing it writes is missed, and from the end so that a
        marker left in the file by an earlier run never counts for this one."""
        if not unit.tail:   # nothing to follow: no task group to hold (it costs memory per service)
            return await self._spawn_and_supervise(inst, unit)
        async with anyio.create_task_group() as tg:
            attached = []
            for path in unit.tail:
                tscan = self._scanner(inst)
                if tscan is not None:
                    ev = anyio.Event()
                    tg.start_soon(self._follow, path, tscan, ev)
                    attached.append(ev)
            with anyio.move_on_after(2.0):
                for ev in attached:
                    await ev.wait()
            result = await self._spawn_and_supervise(inst, unit)
            tg.cancel_scope.cancel()
        return result

    async def _spawn_and_supervise(self, inst: Instance, unit: ResolvedUnit) -> tuple[int | None, str | None]:
        failure = await self._spawn(inst, unit)
        if failure is not None:
            return None, failure
        return await self._supervise(inst, unit), None

    async def _supervise(self, inst: Instance, unit: ResolvedUnit) -> int:
        """Capture output, follow tails, probe readiness, and wait for the exit (pipe drained)."""
        child = inst.child
        assert child is not None
        eof = anyio.Event()
        scanner = self._scanner(inst)
        sinks: list[Callable[[bytes], None]] = [self._write_log]
        if scanner is not None:
            sinks.append(scanner.feed)
        flushes: list[Callable[[], None]] = [eof.set]
        if scanner is not None:
            flushes.insert(0, scanner.flush)
        if self.engine.echo is not None:
            es = self.engine.echo.line_writer(self.name)
            sinks.append(es.write)
            flushes.insert(0, es.flush)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._capture, inst.read_fd, sinks, flushes)
            tg.start_soon(self._readiness, inst, unit)
            code = await child.wait()
            with anyio.move_on_after(DRAIN_AFTER_EXIT):
                await eof.wait()
            if not eof.is_set() or process.anything_left(child):
                # leftovers still hold the pipe or run on: a service is stopped only when none remain
                await process.terminate(child, self.spec.stop.signal, min(self.spec.stop.timeout, 5.0))
                with anyio.move_on_after(DRAIN_AFTER_EXIT):
                    await eof.wait()
            tg.cancel_scope.cancel()
        return code

    async def _capture(self, fd: int, sinks: Sequence[Callable[[bytes], None]],
                       flushes: Sequence[Callable[[], None]]) -> None:
        def sink_error(sink: Callable[[bytes], None], exc: Exception) -> None:
            self.engine.say(f"{self.name}: log output handler failed: {type(exc).__name__}: {exc}")

        await logs.capture(fd, sinks, on_eof=flushes, on_sink_error=sink_error)

    async def _follow(self, path: Path, scanner: logs.LineScanner, started: anyio.Event) -> None:
        try:
            await logs.follow(path, scanner.feed, from_end=True, started=started)
        except Exception as e:
            self.engine.say(f"{self.name}: cannot follow {path}: {e}")
        finally:
            started.set()

    def _scanner(self, inst: Instance) -> logs.LineScanner | None:
        if self.patterns is None:
            return None
        n_rules = len(self.unit.rules)
        context = max((r.context for r in self.unit.rules), default=0)

        def on_match(pid: int, line: bytes, before: list[bytes]) -> None:
            if pid >= n_rules:
                if inst.marker is not None:
                    inst.marker.hit()
            else:
                self.post("rule", inst, pid, line, before)

        return logs.LineScanner(self.patterns, on_match, context_lines=context)

    async def _readiness(self, inst: Instance, unit: ResolvedUnit) -> None:
        probes = inst.probes
        with anyio.move_on_after(unit.ready.timeout):
            await wait_ready(probes, unit.ready.mode)
            self.post("ready", inst)
            return
        self.post("ready-timeout", inst, why_not_ready(probes))

    async def _run_exec(self, argv: Sequence[str], timeout: float) -> int:
        try:
            code, _ = await process.run_to_completion(self.engine.reaper, argv, cwd=self.unit.cwd,
                                                      env=self.process_env(self.unit), timeout=timeout,
                                                      tag=f"{self.name}.probe", pdeathsig=False)
            return code
        except process.SpawnError as e:
            raise RuntimeError(str(e)) from None
        except TimeoutError:
            return 124

    # ------------------------------------------------------------------ logs

    def open_log(self) -> None:
        if self.logfile is None or self.logfile.path != self.unit.log_file:
            if self.logfile is not None:
                self.logfile.close()
            log = self.unit.spec.log
            self.logfile = logs.RotatingFile(self.unit.log_file, log.max_bytes, log.backups,
                                             on_problem=lambda m: self.engine.say(f"{self.name}: {m}"))

    def _write_log(self, data: bytes) -> None:
        if self.logfile is None:
            try:
                self.open_log()
            except logs.LogError:
                return
        assert self.logfile is not None
        self.logfile.write(data)

    def log_line(self, text: str) -> None:
        """A line of qasup's own in the service's log (prepare steps, rule hits)."""
        self._write_log(f"[qasup] {text}\n".encode())

    # ------------------------------------------------------------------ messages from the instance

    def _on_spawned(self, inst: Instance) -> None:
        assert inst.child is not None
        if self.state != STARTING:
            self.set_state(STARTING, f"pid {inst.child.pid}")
        else:
            self.engine.record(self, STARTING, f"pid {inst.child.pid}")
        if inst.terminating:   # a stop arrived while preparing
            self.tg.start_soon(self._terminate, inst)

    def _on_ready(self, inst: Instance) -> None:
        if inst.terminating:
            return
        now = time.monotonic()
        inst.ready_at = now
        self.ready_after = now - (inst.spawned_at or now)
        self.last_error = None
        self.set_state(READY, f"after {self.ready_after:.3f}s")

    def _on_ready_timeout(self, inst: Instance, why: str) -> None:
        if inst.terminating:
            return
        msg = f"not ready within {self.unit.ready.timeout:g}s: {why}"
        self.last_error = msg
        self.engine.say(f"{self.name}: {msg}")
        self.begin_stop("ready-timeout", failure=msg)

    def _on_rule(self, inst: Instance, idx: int, line: bytes, before: list[bytes]) -> None:
        rule = self.unit.rules[idx]
        hits = self.rule_hits[idx]
        now = time.monotonic()
        hits.append(now)
        while hits and now - hits[0] > rule.within:
            hits.popleft()
        if len(hits) < rule.count:
            return
        hits.clear()
        text = line.decode("utf-8", "replace")
        ctx = [b.decode("utf-8", "replace") for b in before[-rule.context:]] if rule.context else []
        head = f"{self.name}: error rule {rule.match!r} ({rule.action})"
        if rule.count > 1:
            head += f" matched {rule.count} times within {rule.within:g}s"
        body = "".join(f"\n    | {c}" for c in ctx) + f"\n    > {text}"
        advice = f"\n    {rule.message}" if rule.message else ""
        full = f"{head}:{body}{advice}"
        self.engine.say(full)
        self.log_line(f"error rule {rule.match!r} ({rule.action}) matched: {text}")
        summary = rule.message or f"matched {rule.match!r}: {text[:200]}"
        if rule.action == "warn" or inst.terminating:
            return
        self.last_error = summary
        if rule.action == "abort":
            self.engine.abort(f"{self.name}: {summary}")
        elif rule.action == "restart":
            self.begin_stop("rule-restart", failure=summary)
        elif rule.action == "fail":
            self.begin_stop("rule-fail", failure=summary)

    # ------------------------------------------------------------------ stop

    def begin_stop(self, reason: str, failure: str | None = None) -> None:
        inst = self.inst
        if inst is None:
            return
        if inst.terminating:
            if reason in ("shutdown", "user"):
                inst.stop_reason = reason
            return
        inst.terminating = True
        inst.stop_reason = reason
        inst.failure = failure
        self.set_state(STOPPING, reason)
        if inst.child is None:
            inst.scope.cancel()   # still preparing: cancel it (prepare's process tree is terminated)
        else:
            self.tg.start_soon(self._terminate, inst)

    async def _terminate(self, inst: Instance) -> None:
        assert inst.child is not None
        timeout = self.spec.stop.timeout
        if self.engine.shutting_down:
            timeout = max(0.0, min(timeout, self.engine.budget_left()))
        await process.terminate(inst.child, self.spec.stop.signal, timeout)

    def kill_now(self) -> None:
        inst = self.inst
        if inst is not None and inst.child is not None:
            inst.terminating = True
            inst.child.signal_group(signal.SIGKILL)
            for pid in process.members(inst.child):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        elif inst is not None:
            inst.scope.cancel()

    # ------------------------------------------------------------------ exit

    def _on_exit(self, inst: Instance, code: int | None, failure: str | None) -> None:
        self.inst = None
        self.exit_code = code
        now = time.monotonic()
        reason = inst.stop_reason
        failure = failure or inst.failure
        ready_for = now - inst.ready_at if inst.ready_at else 0.0
        eng = self.engine
        if failure and reason not in ("user", "shutdown", "restart", "reload"):
            self.last_error = failure
        elif code not in (0, None) and reason is None:
            self.last_error = f"exited with code {code}" + (f" (signal {code - 128})" if code > 128 else "")
        what = f"exit code {code}" if code is not None else (failure or "not started")
        if eng.shutting_down or reason == "shutdown" or self.removed:
            self.set_state(FAILED if self.state == FAILED else STOPPED, what)
            self.evaluate()
            return
        if reason == "user":
            self.set_state(STOPPED, what)
            return
        if reason in ("dep-wait", "restart", "reload"):
            if reason == "restart":
                self.delay = self.spec.restart.delay
            self.set_state(WAITING, what)
            self.evaluate()
            return
        if reason == "dep-fail":
            self.set_state(FAILED, self.last_error)
            return
        if reason == "rule-fail":
            self.held = "failed"
            self.set_state(FAILED, self.last_error)
            return
        failed = failure is not None or code != 0 or reason in ("ready-timeout", "rule-restart")
        if inst.child is None and failure is not None:
            eng.say(f"{self.name}: start failed: {failure}")
        elif failed and reason is None:
            eng.say(f"{self.name}: exited with code {code}"
                    + (f" (killed by {_signame(code - 128)})" if code and code > 128 else ""))
        rs = self.spec.restart
        # an on_log rule with action "restart" asks for a restart whatever the policy says (it still counts
        # towards max_restarts, so a service that keeps printing the line gives up)
        if reason != "rule-restart" and (rs.policy == "never" or (rs.policy == "on-failure" and not failed)):
            if failed:
                self.held = "failed"
                self.set_state(FAILED, self.last_error)
            else:
                self.set_state(STOPPED, what)
            return
        if ready_for >= rs.reset_after:
            self.delay = rs.delay
            self.restart_times.clear()
        while self.restart_times and now - self.restart_times[0] > rs.window:
            self.restart_times.popleft()
        if len(self.restart_times) >= rs.max_restarts:
            msg = (f"gave up after {rs.max_restarts} restarts within {rs.window:g}s"
                   + (f"; last error: {self.last_error}" if self.last_error else ""))
            self.last_error = msg
            self.held = "failed"
            eng.say(f"{self.name}: {msg}")
            self.set_state(FAILED, msg)
            if rs.on_give_up == "abort":
                eng.abort(f"{self.name}: {msg}")
            return
        self.restart_times.append(now)
        self.restarts += 1
        delay = self.delay * _jitter() if self.delay > 0 else 0.0
        self.delay = min(max(self.delay * 2, 0.0), rs.max_delay) if self.delay > 0 else 0.0
        self.backoff_token += 1
        self.set_state(BACKOFF, f"restart {self.restarts} in {delay:.2f}s")
        self.tg.start_soon(self._backoff, self.backoff_token, delay)

    async def _backoff(self, token: int, delay: float) -> None:
        await anyio.sleep(delay)
        self.post("backoff-done", token)

    def _on_backoff_done(self, token: int) -> None:
        if token != self.backoff_token or self.state != BACKOFF:
            return
        self.set_state(WAITING)
        self.evaluate()

    # ------------------------------------------------------------------ control

    def _on_start(self) -> None:
        if self.state == DISABLED:
            return
        self.held = None
        if self.state == FAILED:
            self.restart_times.clear()
            self.delay = self.spec.restart.delay
        if self.inst is None and self.state in (STOPPED, FAILED, BACKOFF):
            self.backoff_token += 1
            self.set_state(WAITING, "started by user")
        self.evaluate()

    def _on_stop(self) -> None:
        if self.state == DISABLED:
            return
        self.held = "user"
        self.backoff_token += 1
        if self.inst is not None:
            self.begin_stop("user")
        elif self.state != STOPPED:
            self.set_state(STOPPED, "stopped by user")

    def _on_restart(self) -> None:
        if self.state == DISABLED:
            return
        self.held = None
        if self.inst is not None:
            if self.inst.terminating:
                self.inst.stop_reason = "restart"
            else:
                self.begin_stop("restart")
            return
        # waiting or in back-off: no second instance, just start now if dependencies allow
        self.backoff_token += 1
        self.restart_times.clear()
        self.delay = self.spec.restart.delay
        if self.state != WAITING:
            self.set_state(WAITING, "restart requested")
        self.evaluate()

    def _on_shutdown(self) -> None:
        self.backoff_token += 1
        self.evaluate()

    def _on_replace(self, unit: ResolvedUnit, splan: ServicePlan, restart: bool) -> None:
        """Reload: take the new unit; restart if it changed."""
        was_disabled = self.state == DISABLED
        self.unit, self.splan = unit, splan
        self._setup_patterns()
        if self.logfile is not None and self.logfile.path != unit.log_file:
            self.logfile.close()
            self.logfile = None
        if not splan.enabled:
            if self.inst is not None:
                self.begin_stop("user")
            self.held = None
            self.set_state(DISABLED, "disabled by reload")
            return
        if was_disabled:
            self.set_state(WAITING, "enabled by reload")
        if restart and self.inst is not None:
            self.begin_stop("reload")
            return
        if restart and self.held == "failed":
            self.held = None
            self.restart_times.clear()
        self.evaluate()

    def _on_remove(self) -> None:
        self.removed = True
        self.evaluate()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        inst = self.inst
        pid = inst.child.pid if inst is not None and inst.child is not None and inst.child.returncode is None \
            else None
        uptime = now - inst.spawned_at if inst is not None and inst.spawned_at is not None else None
        return {
            "name": self.name, "state": self.state, "pid": pid, "restarts": self.restarts,
            "uptime_s": round(uptime, 3) if uptime is not None else None,
            "ready_after_s": round(self.ready_after, 3) if self.ready_after is not None else None,
            "exit_code": self.exit_code, "last_error": self.last_error,
            "gpu": self.splan.env.get("CUDA_VISIBLE_DEVICES"),
        }


def _release_memory() -> None:
    """Give the heap that start-up used (imports, plan, config) back to the system: qasup idles for days."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):   # not glibc
        pass


def _jitter() -> float:
    """A factor in [0.9, 1.1) (``random`` would load OpenSSL into every daemon for this)."""
    return 0.9 + 0.2 * int.from_bytes(os.urandom(4), "big") / 2**32


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


class Engine:
    """Runs a plan. ``await engine.run()`` returns the exit code of ``qasup up``."""

    def __init__(self, plan: Plan, reaper: process.Reaper, *, echo: logs.Echo | None,
                 say: Callable[[str], None], planner: Callable[[], Plan] | None = None,
                 daemon_id: str | None = None) -> None:
        self.plan = plan
        self.stack = plan.config.stack
        self.graph = plan.graph
        self.reaper = reaper
        self.echo = echo
        self._say = say
        self.planner = planner
        self.state_dir = self.stack.path(self.stack.state_dir)
        self.plan_env = {**plan.lookup_extra, **plan.env}
        # the daemon's own environment, decoded once: resolving with os.environ would decode it again for
        # every start of every service, and each resolved unit would hold its own copies of the strings
        self.environ: dict[str, str] = dict(os.environ)
        self.services: dict[str, Service] = {}
        for name, splan in plan.services.items():
            unit = plan.resolved.get(name)
            if unit is None:   # disabled: resolve leniently for status and logs
                unit = _lenient_resolve(plan, name)
            self.services[name] = Service(self, unit, splan)
        self.shutting_down = False
        self.stop_deadline = math.inf
        self.abort_reason: str | None = None
        self.started = time.monotonic()
        self.ready_once = False
        self.changed = anyio.Event()
        self._subscribers: set[MemoryObjectSendStream[dict]] = set()
        self._events_file: Any = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._killed = False
        self.reload_lock = anyio.Lock()
        self.daemon_id = daemon_id or os.urandom(8).hex()

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> int:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._events_file = open(self.state_dir / "events.jsonl", "a", buffering=1, encoding="utf-8")
        except OSError as e:
            self.say(f"cannot write the state folder {self.state_dir}: {e.strerror or e}")
            return 1
        if self.plan.env:
            try:
                dotenv.update(self.stack.path(self.stack.env_file), self.plan.env)
            except (OSError, ValueError) as e:
                self.say(f"cannot update {self.stack.env_file}: {e}")
                return 1
        self.record(None, "", "stack starting")
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for svc in self.services.values():
                    tg.start_soon(svc.run)
                tg.start_soon(self._watch_ready)
                await self._all_finished()
                tg.cancel_scope.cancel()
        finally:
            for svc in self.services.values():
                if svc.logfile is not None:
                    svc.logfile.close()
            for s in list(self._subscribers):
                s.close()
            self.record(None, "", "stack stopped")
            if self._events_file is not None:
                self._events_file.close()
        return 1 if self.abort_reason else 0

    async def _all_finished(self) -> None:
        while True:
            pending = [s for s in self.services.values() if not s.done]
            if not pending:
                return
            await pending[0].finished.wait()

    async def _watch_ready(self) -> None:
        while True:
            ev = self.changed
            if not self.ready_once and not self.shutting_down and self.stack_state() == "ready":
                self.ready_once = True
                took = time.monotonic() - self.started
                if self.plan.banner:
                    self.say(self.plan.banner)
                self.say(f"all {len(self.enabled_services())} services ready in {took:.2f}s")
                _release_memory()
            await ev.wait()

    def shutdown(self, reason: str = "shutdown requested") -> None:
        """Begin the ordered shutdown (idempotent)."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.stop_deadline = time.monotonic() + self.stack.stop_budget
        self.say(f"stopping: {reason}")
        self.record(None, "", f"stopping: {reason}")
        for svc in self.services.values():
            svc.post("shutdown")
        if self._tg is not None:
            self._tg.start_soon(self._budget_watchdog)

    async def _budget_watchdog(self) -> None:
        await anyio.sleep(max(0.0, self.stop_deadline - time.monotonic()))
        left = [s.name for s in self.services.values() if s.inst is not None]
        if left:
            self.say(f"stop budget ({self.stack.stop_budget:g}s) spent: killing {', '.join(left)}")
            self.kill_now()

    def kill_now(self) -> None:
        """SIGKILL every process of every service (a second Ctrl-C, or the stop budget spent)."""
        self._killed = True
        if not self.shutting_down:
            self.shutting_down = True
            self.stop_deadline = time.monotonic()
            for svc in self.services.values():
                svc.post("shutdown")
        for svc in self.services.values():
            svc.kill_now()

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
            self.say(f"aborting the stack: {reason}")
        self.shutdown(f"abort: {reason}")

    def budget_left(self) -> float:
        return self.stop_deadline - time.monotonic()

    # ------------------------------------------------------------------ graph queries

    def enabled_services(self) -> list[Service]:
        return [s for s in self.services.values() if s.state != DISABLED and not s.removed]

    def deps_verdict(self, name: str) -> tuple[str, str]:
        for d in self.graph.requires.get(name, ()):
            s = self.services[d]
            if s.state == READY:
                continue
            if s.state == FAILED:
                return "fail", f"requires {d}, which failed" + (f": {s.last_error}" if s.last_error else "")
            return "wait", f"waiting for {d} ({s.state})"
        for d in self.graph.after.get(name, ()):
            s = self.services[d]
            if s.state in (READY, FAILED, STOPPED, DISABLED):
                continue
            return "wait", f"after {d} ({s.state})"
        return "ok", ""

    def dependents_running(self, name: str) -> bool:
        return any(self.services[n].inst is not None for n in self._dependents.get(name, ()))

    def poke_neighbours(self, name: str) -> None:
        ev, self.changed = self.changed, anyio.Event()
        ev.set()
        for n in self._neighbours.get(name, ()):
            svc = self.services.get(n)
            if svc is not None:
                svc.post("poke")

    @property
    def _neighbours(self) -> dict[str, set[str]]:
        return self._adjacency()[0]

    @property
    def _dependents(self) -> dict[str, set[str]]:
        return self._adjacency()[1]

    def _adjacency(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Neighbours (either direction) and direct dependents of each service, computed once per graph."""
        cached = getattr(self, "_nb_cache", None)
        if cached is not None and cached[0] is self.graph:
            return cached[1], cached[2]
        nb: dict[str, set[str]] = {n: set() for n in self.services}
        rdeps: dict[str, set[str]] = {n: set() for n in self.services}
        for n in self.graph.nodes:
            for d in self.graph.deps(n):
                nb.setdefault(n, set()).add(d)
                nb.setdefault(d, set()).add(n)
                rdeps.setdefault(d, set()).add(n)
        self._nb_cache = (self.graph, nb, rdeps)
        return nb, rdeps

    # ------------------------------------------------------------------ events and messages

    def say(self, text: str) -> None:
        self._say(text)

    def record(self, svc: Service | None, prev: str, message: str | None) -> None:
        ev: dict[str, Any] = {"ts": round(time.time(), 6)}
        if svc is not None:
            ev.update(service=svc.name, state=svc.state, prev=prev)
            if svc.inst is not None and svc.inst.child is not None:
                ev["pid"] = svc.inst.child.pid
        else:
            ev["stack"] = self.stack_state()
        if message:
            ev["message"] = message
        if self._events_file is not None:
            try:
                self._events_file.write(json.dumps(ev) + "\n")
            except (OSError, ValueError):
                pass
        for s in list(self._subscribers):
            try:
                s.send_nowait(ev)
            except anyio.WouldBlock:
                s.close()          # a subscriber that does not keep up is dropped
                self._subscribers.discard(s)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._subscribers.discard(s)

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[dict]]:
        send, recv = anyio.create_memory_object_stream[dict](1000)
        self._subscribers.add(send)
        try:
            async with recv:
                yield recv
        finally:
            self._subscribers.discard(send)
            send.close()

    # ------------------------------------------------------------------ status

    def stack_state(self) -> str:
        if self.abort_reason is not None:
            return "aborted"
        if self.shutting_down:
            return "stopping"
        svcs = self.enabled_services()
        if all(s.state == READY for s in svcs):
            return "ready"
        if any(s.state == FAILED for s in svcs) or (self.ready_once and any(
                s.state in (BACKOFF, STOPPED, WAITING, STARTING, PREPARING) for s in svcs)):
            return "degraded"
        return "starting"

    def status(self, names: Sequence[str] = ()) -> dict[str, Any]:
        svcs = [self.services[n] for n in names] if names else [
            s for s in self.services.values() if not s.removed]
        return {
            "stack": {"state": self.stack_state(), "pid": os.getpid(),
                      "uptime_s": round(time.monotonic() - self.started, 3), "name": self.stack.name},
            "services": [s.status() for s in svcs],
        }

    def has_service(self, name: str) -> bool:
        s = self.services.get(name)
        return s is not None and not s.removed

    def log_path(self, name: str) -> Path:
        return self._get(name).unit.log_file

    def _get(self, name: str) -> Service:
        s = self.services.get(name)
        if s is None or s.removed:
            raise EngineError(f"unknown service {name!r}", 404)
        return s

    # ------------------------------------------------------------------ control

    async def _settle(self, svc: Service, done: Callable[[Service], bool], timeout: float) -> None:
        with anyio.move_on_after(timeout):
            while not done(svc):
                await svc.changed.wait()

    def _result(self, svc: Service, ok: bool, what: str) -> dict[str, Any]:
        st = svc.status()
        if not ok:
            raise EngineError(f"{svc.name}: {what}: state {svc.state}"
                              + (f": {svc.last_error}" if svc.last_error else ""), 409)
        return {"ok": True, "service": st}

    def _check_control(self, svc: Service) -> None:
        if self.shutting_down:
            raise EngineError("the stack is shutting down", 409)
        if svc.state == DISABLED:
            raise EngineError(f"{svc.name} is disabled by the plan ({svc.splan.reason})", 409)

    async def start(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        svc = self._get(name)
        self._check_control(svc)
        svc.post("start")
        await anyio.sleep(0)
        wait = timeout if timeout is not None else svc.unit.ready.timeout + 5
        await self._settle(svc, lambda s: s.state in (READY, FAILED) or (
            s.state == WAITING and self.deps_verdict(s.name)[0] != "ok"), wait)
        return self._result(svc, svc.state in (READY, WAITING), "start failed")

    async def stop(self, name: str) -> dict[str, Any]:
        svc = self._get(name)
        self._check_control(svc)
        svc.post("stop")
        await self._settle(svc, lambda s: s.inst is None and s.state in (STOPPED, FAILED),
                           svc.spec.stop.timeout + 10)
        return self._result(svc, svc.inst is None, "stop did not finish")

    async def restart(self, name: str, with_dependents: bool = False, timeout: float | None = None
                      ) -> dict[str, Any]:
        svc = self._get(name)
        self._check_control(svc)
        targets = [svc]
        if with_dependents:
            targets += [self.services[n] for n in self.graph.dependents(name)
                        if self.services[n].state != DISABLED]
        before = {s.name: s.instances for s in targets}
        for s in targets:
            s.post("restart")
        await anyio.sleep(0)
        wait = timeout if timeout is not None else max(s.unit.ready.timeout for s in targets) + 10
        with anyio.move_on_after(wait):
            for s in targets:
                await self._settle(s, lambda x: (x.state == READY and x.instances > before[x.name])
                                   or x.state == FAILED or (x.state == WAITING and x.inst is None
                                                            and self.deps_verdict(x.name)[0] != "ok"), wait)
        bad = [s for s in targets if s.state not in (READY, WAITING)]
        if bad:
            raise EngineError("; ".join(f"{s.name}: {s.state}" + (f": {s.last_error}" if s.last_error else "")
                                        for s in bad), 409)
        return {"ok": True, "services": [s.status() for s in targets]}

    async def reload(self) -> dict[str, Any]:
        """Re-plan from the files; restart only services whose resolved unit or plan changed."""
        if self.planner is None:
            raise EngineError("reload is not available", 400)
        if self.shutting_down:
            raise EngineError("the stack is shutting down", 409)
        async with self.reload_lock:
            try:
                new = await anyio.to_thread.run_sync(self.planner)
            except ReloadRejected as e:
                raise EngineError(f"new configuration rejected, the running one stays: {e}", 400) from None
            if not new.feasible:
                raise EngineError(f"new plan is infeasible, the running one stays: {new.error}", 400)
            changed, added, removed = [], [], []
            old_plan = self.plan
            self.plan = new
            self.plan_env = {**new.lookup_extra, **new.env}
            self.graph = new.graph
            if new.env and new.env != old_plan.env:
                dotenv.update(self.stack.path(self.stack.env_file), new.env)
            for name, splan in new.services.items():
                unit = new.resolved.get(name) or _lenient_resolve(new, name)
                svc = self.services.get(name)
                if svc is None or svc.removed:
                    svc = Service(self, unit, splan)
                    self.services[name] = svc
                    added.append(name)
                    assert self._tg is not None
                    self._tg.start_soon(svc.run)
                    continue
                differs = _fingerprint(svc.unit, svc.splan) != _fingerprint(unit, splan)
                if differs:
                    changed.append(name)
                svc.post("replace", unit, splan, differs)
            for name, svc in self.services.items():
                if name not in new.services and not svc.removed:
                    removed.append(name)
                    svc.post("remove")
            for svc in self.services.values():
                svc.post("poke")
            self.record(None, "", f"reloaded: changed {changed}, added {added}, removed {removed}")
            self.say(f"reload: changed {', '.join(changed) or 'none'}; added {', '.join(added) or 'none'}; "
                     f"removed {', '.join(removed) or 'none'}")
            return {"ok": True, "changed": changed, "added": added, "removed": removed}


def _fingerprint(unit: ResolvedUnit, splan: ServicePlan) -> tuple:
    """What makes a running service out of date: its resolved command, environment, files and plan."""
    s = unit.spec
    return (unit.argv, str(unit.cwd), tuple(sorted(unit.env.items())), str(unit.log_file), unit.tail,
            unit.prepare_argv, unit.ready, unit.rules, s.stop, s.restart, s.log, splan.enabled,
            tuple(sorted(splan.env.items())))


def _lenient_resolve(plan: Plan, name: str) -> ResolvedUnit:
    """A disabled unit still shows in status and has a log path; unknown variables are left as written."""
    from supervisor.plan.resolve import ReadyChecks

    unit = plan.config.units[name]
    probs = Problems()
    r = resolve_unit(plan.config.stack, unit, {**plan.lookup_extra, **plan.env}, {}, probs,
                     pending_env_file=plan.env)
    if r is not None:
        return r
    stack = plan.config.stack
    return ResolvedUnit(spec=unit, argv=unit.command, cwd=stack.root, env={}, log_file=stack.path(
        stack.log_dir) / f"{name}.log", tail=(), requires_paths=(), prepare_argv=None, prepare_paths=(),
        ready=ReadyChecks(None, None, None, None, "all", unit.ready.timeout, unit.ready.interval), rules=())


__all__ = ["Engine", "EngineError", "ReloadRejected", "mask"]
