"""The engine: runs a plan. Starts services as soon as what they need is ready, answers control requests, and
stops everything in reverse dependency order.

It owns the services (:class:`~supervisor.engine.service.Service`, one state machine and runner each), the
stack-wide facts they ask about (dependencies, shutdown, the stop budget), the events, and the requests of
:class:`supervisor.control.server.Controller`. Refusals are domain errors (:mod:`supervisor.engine.errors`);
the engine knows nothing of HTTP, the control API or the CLI.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from supervisor.config import dotenv
from supervisor.engine import messages as m
from supervisor.engine import progress
from supervisor.engine import reload as reloading
from supervisor.engine.errors import Conflict, Unavailable, UnknownService
from supervisor.engine.events import EventLog
from supervisor.engine.externalhost import hosts_for
from supervisor.engine.host import HostContext, environment_with
from supervisor.engine.instance import Neighbour, ServiceHost
from supervisor.engine.outcome import outcome
from supervisor.engine.policy import jitter as default_jitter
from supervisor.engine.service import Service
from supervisor.engine.settle import StopReceipt, check_control, refused, settle, stopped_by_user, waits_for_deps
from supervisor.engine.states import DepVerdict, ServiceState, StackState
from supervisor.errors import Problems
from supervisor.logs.echo import Echo
from supervisor.plan.resolve import ResolvedUnit, resolve_unit, sharing
from supervisor.plan.result import Plan
from supervisor.proc.guardian import DAEMON_VARIABLE
from supervisor.proc.kernel import release_memory
from supervisor.proc.reaper import Reaper
from supervisor.protocol import stack_status

if TYPE_CHECKING:
    from supervisor.protocol import StatusPayload

S = ServiceState


class Engine:
    """Runs a plan. ``await engine.run()`` returns the exit code of ``qasup up``.

    ``host`` makes each service's I/O host (default: real processes through ``reaper``); ``clock`` and
    ``jitter`` are the time and the back-off jitter (tests pass fakes)."""

    def __init__(self, plan: Plan, reaper: Reaper | None, *, echo: Echo | None,
                 say: Callable[[str], None], planner: Callable[[], Plan] | None = None,
                 daemon_id: str | None = None, clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = default_jitter,
                 host: Callable[[Service], ServiceHost] | None = None) -> None:
        self.plan = plan
        self.stack = plan.config.stack
        self.graph = plan.graph
        self.planner = planner
        self.clock = clock
        self.jitter = jitter
        self._say = say
        self.state_dir = self.stack.path(self.stack.state_dir)
        self.plan_env = {**plan.lookup_extra, **plan.env}
        # the daemon's own environment, decoded once: resolving with os.environ would decode it again for
        # every start of every service, and each resolved unit would hold its own copies of the strings
        self.environ: dict[str, str] = dict(os.environ)
        self.daemon_id = daemon_id or os.urandom(8).hex()
        if host is None:
            assert reaper is not None, "the real host needs the reaper"
            ctx = HostContext(reaper=reaper, echo=echo, say=say, state_dir=self.state_dir,
                              environment=environment_with(DAEMON_VARIABLE, self.daemon_id),
                              resolve=self._resolve_again, daemon_id=self.daemon_id)
            host = hosts_for(ctx)   # a process host per local service, an ExternalHost per external one
        self._host = host
        self.services: dict[str, Service] = {}
        for name, splan in plan.services.items():
            unit = plan.resolved.get(name) or reloading.lenient_resolve(plan, name)
            self.services[name] = Service(self, unit, splan, host)
        self.shutting_down = False
        self.stop_deadline = math.inf
        self.abort_reason: str | None = None
        self.interrupted = False               # a second SIGINT killed everything at once
        self.forced: list[str] = []            # services SIGKILLed during the shutdown
        self.started = clock()
        self.ready_once = False
        self._changed: anyio.Event | None = None
        self.events = EventLog()
        self._tg: anyio.abc.TaskGroup | None = None
        self.reload_lock = anyio.Lock()
        self.notify: Callable[[str], object] | None = None   # sd_notify to qasup's own manager (daemon.py)

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> int:
        from supervisor.engine.statedir import make_private_dir  # here: only run() needs it

        try:
            make_private_dir(self.state_dir, self.say)   # 0700 (events.jsonl is 0600), whatever the umask
            self.events.open(self.state_dir / "events.jsonl")
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
                    svc.start(tg)   # no task per service: its messages are delivered by the loop
                tg.start_soon(self._watch_ready)
                tg.start_soon(progress.report, self, self.notify)
                await self._all_finished()
                tg.cancel_scope.cancel()
        finally:
            for svc in self.services.values():
                svc.host.close()
            self.events.close_subscribers()
            end = outcome(self.abort_reason, self.interrupted, self.forced)
            self.say(end.line)
            self.record(None, "", end.line)
            self.events.close()
        return end.code

    async def _all_finished(self) -> None:
        while True:
            pending = [s for s in self.services.values() if not s.done]
            if not pending:
                return
            await pending[0].finished.wait()

    @property
    def changed(self) -> anyio.Event:
        """Set at the next state change of any service."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    async def _watch_ready(self) -> None:
        while True:
            ev = self.changed
            if not self.ready_once and not self.shutting_down and self.stack_state() == StackState.READY:
                self.ready_once = True
                took = self.clock() - self.started
                if self.plan.banner:
                    self.say(self.plan.banner)
                self.say(f"all {len(self.enabled_services())} services ready in {took:.2f}s")
                release_memory()
            await ev.wait()

    async def shutdown(self) -> None:
        """The control API's shutdown: begin it and return at once."""
        self.begin_shutdown("shutdown requested through the control socket")

    def begin_shutdown(self, reason: str = "shutdown requested") -> None:
        """Begin the ordered shutdown (idempotent)."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.stop_deadline = self.clock() + self.stack.stop_budget
        self.say(f"stopping: {reason}")
        if self.notify is not None:
            self.notify("STOPPING=1")
        self.record(None, "", f"stopping: {reason}")
        for svc in self.services.values():
            svc.post(m.Shutdown())
        if self._tg is not None:
            self._tg.start_soon(self._budget_watchdog)

    async def _budget_watchdog(self) -> None:
        await anyio.sleep(max(0.0, self.stop_deadline - self.clock()))
        left = [s.name for s in self.services.values() if s.inst is not None]
        if left:
            self.say(f"stop budget ({self.stack.stop_budget:g}s) spent: killing {', '.join(left)}")
            self.kill_now()

    def kill_now(self, interrupted: bool = False) -> None:
        """SIGKILL every process of every service (a second Ctrl-C: ``interrupted``, or the stop budget spent)."""
        self.interrupted = self.interrupted or interrupted
        if not self.shutting_down:
            self.shutting_down = True
            self.stop_deadline = self.clock()
            for svc in self.services.values():
                svc.post(m.Shutdown())
        for svc in self.services.values():
            if svc.inst is not None and svc.inst.pid is not None:
                self.note_forced(svc.name)
        for svc in self.services.values():
            svc.kill_now()

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
            self.say(f"aborting the stack: {reason}")
        self.begin_shutdown(f"abort: {reason}")

    def note_forced(self, name: str) -> None:
        """A stop of ``name`` had to SIGKILL (counted during the shutdown only: it decides the exit code)."""
        if self.shutting_down and name not in self.forced:
            self.forced.append(name)

    def budget_left(self) -> float:
        return self.stop_deadline - self.clock()

    # ------------------------------------------------------------------ what services ask (StackView)

    def requires(self, name: str) -> Iterable[str]:
        return self.graph.requires.get(name, ())

    def restart_with(self, name: str) -> Iterable[str]:
        return self.graph.restart_with.get(name, ())

    def service(self, name: str) -> Service:
        return self.services[name]

    def enabled_services(self) -> list[Service]:
        return [s for s in self.services.values() if s.state != S.DISABLED and not s.removed]

    def deps_verdict(self, name: str) -> tuple[DepVerdict, str]:
        for d in self.graph.requires.get(name, ()):
            s = self.services[d]
            if s.state == S.READY:
                continue
            if s.state == S.FAILED:
                return DepVerdict.FAIL, f"requires {d}, which failed" + (f": {s.last_error}" if s.last_error else "")
            return DepVerdict.WAIT, f"waiting for {d} ({s.state})"
        for d in self.graph.after.get(name, ()):
            s = self.services[d]
            if s.state in (S.READY, S.FAILED, S.STOPPED, S.DISABLED):
                continue
            return DepVerdict.WAIT, f"after {d} ({s.state})"
        return DepVerdict.GO, ""

    def dependents_running(self, name: str) -> bool:
        return any(self.services[n].inst is not None for n in self.graph.waiting_for(name))

    def poke_neighbours(self, name: str) -> None:
        ev, self._changed = self._changed, None
        if ev is not None:
            ev.set()
        for n in self.graph.neighbours(name):
            svc = self.services.get(n)
            if svc is not None:
                svc.post(m.Poke())

    def _resolve_again(self, svc: Service, probs: Problems) -> ResolvedUnit | None:
        return resolve_unit(self.stack, svc.spec, self.plan_env, svc.splan.env, probs, self.environ,
                            pending_env_file=self.plan.env, env_cache=sharing(self.environ))

    # ------------------------------------------------------------------ events and messages

    def say(self, text: str) -> None:
        self._say(text)

    def record(self, svc: Neighbour | None, prev: str, message: str | None) -> None:
        ev: dict[str, Any] = {"ts": round(time.time(), 6)}
        if svc is not None:
            ev.update(service=svc.name, state=svc.state, prev=prev)
            if svc.inst is not None and svc.inst.pid is not None:
                ev["pid"] = svc.inst.pid
        else:
            ev["stack"] = self.stack_state()
        if message:
            ev["message"] = message
        self.events.emit(ev)

    def subscribe_events(self) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        return self.events.subscribe()

    # ------------------------------------------------------------------ status

    def stack_state(self) -> StackState:
        if self.abort_reason is not None:
            return StackState.ABORTED
        if self.shutting_down:
            return StackState.STOPPING
        svcs = self.enabled_services()
        if all(s.state == S.READY for s in svcs):
            return StackState.READY
        if any(s.state == S.FAILED for s in svcs) or (self.ready_once and any(
                s.state in (S.BACKOFF, S.STOPPED, S.WAITING, S.STARTING, S.PREPARING) for s in svcs)):
            return StackState.DEGRADED
        return StackState.STARTING

    def status(self, names: Sequence[str] = ()) -> StatusPayload:
        svcs = [self.services[n] for n in names] if names else [
            s for s in self.services.values() if not s.removed]
        return {"stack": stack_status(state=self.stack_state(), pid=os.getpid(),
                                      uptime_s=self.clock() - self.started, name=self.stack.name),
                "services": [s.status(progress.waiting_on(self, s)) for s in svcs]}

    def has_service(self, name: str) -> bool:
        s = self.services.get(name)
        return s is not None and not s.removed

    def log_path(self, name: str) -> Path:
        return self._get(name).unit.log_file

    def _get(self, name: str) -> Service:
        s = self.services.get(name)
        if s is None or s.removed:
            raise UnknownService(f"unknown service {name!r}")
        return s

    # ------------------------------------------------------------------ requests

    async def start(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        svc = self._get(name)
        check_control(svc)
        svc.post(m.StartRequest())
        await anyio.sleep(0)
        wait = timeout if timeout is not None else svc.unit.ready.timeout + 5
        await settle(svc, lambda s: s.state in (S.READY, S.FAILED) or waits_for_deps(s)
                           or stopped_by_user(s), wait)
        if svc.state not in (S.READY, S.WAITING):
            raise refused(svc, "start failed")
        return {"ok": True, "service": svc.status()}

    async def stop(self, name: str) -> dict[str, Any]:
        svc = self._get(name)
        check_control(svc)
        receipt = StopReceipt()
        svc.post(m.StopRequest(receipt))
        await settle(svc, lambda s: (s.inst is None and s.state in (S.STOPPED, S.FAILED)) or receipt.overtaken(s),
                     svc.spec.stop.timeout + 10)
        if receipt.overtaken(svc):
            raise refused(svc, "stop overtaken by a later start or restart")
        if svc.inst is not None:
            raise refused(svc, "stop did not finish")
        return {"ok": True, "service": svc.status()}

    async def restart(self, name: str, with_dependents: bool = False, timeout: float | None = None
                      ) -> dict[str, Any]:
        svc = self._get(name)
        check_control(svc)
        targets = [svc]
        if with_dependents:
            targets += [self.services[n] for n in self.graph.dependents(name)
                        if self.services[n].state != S.DISABLED]
        before = {s.name: s.instances for s in targets}
        for s in targets:
            s.post(m.RestartRequest())
        await anyio.sleep(0)
        wait = timeout if timeout is not None else max(s.unit.ready.timeout for s in targets) + 10

        def settled(x: Service) -> bool:
            return ((x.state == S.READY and x.instances > before[x.name]) or x.state == S.FAILED
                    or (x.inst is None and waits_for_deps(x)) or stopped_by_user(x))

        with anyio.move_on_after(wait):
            for s in targets:
                await settle(s, settled, wait)
        bad = [s for s in targets if s.state not in (S.READY, S.WAITING)]
        if bad:
            raise Conflict("; ".join(f"{s.name}: {s.state}" + (f": {s.last_error}" if s.last_error else "")
                                     for s in bad))
        return {"ok": True, "services": [s.status() for s in targets]}

    async def reload(self) -> dict[str, Any]:
        """Re-plan from the files; restart only services whose resolved unit or plan changed."""
        if self.planner is None:
            raise Unavailable("reload is not available")
        if self.shutting_down:
            raise Conflict("the stack is shutting down")
        async with self.reload_lock:
            new = await anyio.to_thread.run_sync(reloading.plan_again, self.planner)
            change = reloading.compare(self.services, new)
            old_env = self.plan.env
            self.plan = new
            self.plan_env = {**new.lookup_extra, **new.env}
            self.graph = new.graph
            if new.env and new.env != old_env:
                dotenv.update(self.stack.path(self.stack.env_file), new.env)
            for unit, splan in change.added:
                svc = self.services[unit.name] = Service(self, unit, splan, self._host)
                assert self._tg is not None
                svc.start(self._tg)
            for name, msg in change.messages:
                self.services[name].post(msg)
            for svc in self.services.values():
                svc.post(m.Poke())
            self.record(None, "", f"reloaded: {change.summary()}")
            self.say(f"reload: {change.summary()}")
            return {"ok": True, "changed": change.changed, "added": change.added_names, "removed": change.removed}


__all__ = ["Engine"]
