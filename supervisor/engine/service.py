"""A service's state machine: its state, its restart policy and its reaction to every message.

Each service has one runner task and one mailbox; every event (its process started, became ready, printed an
error line, exited; a user asked to stop it; a neighbour changed state) is a message handled in order by
:meth:`Service.handle`, so no two tasks ever race on a service's state. The machine does no I/O itself: it
asks its :class:`~supervisor.engine.instance.ServiceHost` to launch, stop or kill a run, and it asks the stack
(:class:`StackView`) about its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from supervisor.engine import exits, external, liveness, requests
from supervisor.engine import messages as m
from supervisor.engine.counters import ServiceCounters, wall_time
from supervisor.engine.instance import Instance, ServiceHost, StackView
from supervisor.engine.mailbox import Mailbox
from supervisor.engine.policy import RestartPolicy
from supervisor.engine.rules import RuleReport, RuleWindow
from supervisor.engine.states import DepVerdict, Hold, ServiceState, StopReason
from supervisor.protocol import service_status

if TYPE_CHECKING:
    from supervisor.config.spec import UnitSpec
    from supervisor.plan.resolve import ResolvedUnit
    from supervisor.plan.result import ServicePlan
    from supervisor.protocol import ServiceStatus

S = ServiceState


class Service:
    """Runtime state of one service and its runner (the only code that changes that state)."""

    def __init__(self, stack: StackView, unit: ResolvedUnit, splan: ServicePlan,
                 host: Callable[[Service], ServiceHost]) -> None:
        self.stack = stack
        self.name = unit.name
        self.unit = unit
        self.splan = splan
        self.state = S.WAITING if splan.enabled else S.DISABLED
        self.mailbox = Mailbox()
        self.hold: Hold | None = None
        self.restarts = 0
        self.policy = RestartPolicy(unit.spec.restart)
        self.backoff_token = 0
        self.inst: Instance | None = None
        self.instances = 0
        self.exit_code: int | None = None
        self.last_error: str | None = None
        self.ready_after: float | None = None
        self.state_since = stack.clock()
        self.rule_hits = [RuleWindow(r) for r in unit.rules]
        self.counters = ServiceCounters(r.match for r in unit.rules)   # for /metrics
        self.live_failures = 0                # failed [live] rounds in a row, once LiveFailed came
        self.peers_seen: dict[str, int] = {}  # restart_with: the instance of each named service at launch
        # made only when someone waits (two events per service add up in a stack of hundreds)
        self._finished: anyio.Event | None = None
        self._changed: anyio.Event | None = None
        self.done = False                     # the runner has returned
        self.removed = False
        self.make_host = host                 # a reload may make it external, or local again (external.fit_host)
        self.host = host(self)

    # ------------------------------------------------------------------ helpers

    @property
    def spec(self) -> UnitSpec:
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

    def post(self, msg: m.Message) -> None:
        self.mailbox.put(msg)

    def set_state(self, state: ServiceState, message: str | None = None) -> None:
        if state == self.state and message is None:
            return
        prev, self.state = self.state, state
        self.state_since = self.stack.clock()
        self.stack.record(self, prev, message)
        self.wake_waiters()
        self.stack.poke_neighbours(self.name)

    def wake_waiters(self) -> None:
        """Wake whoever waits on :attr:`changed` (at a state change, or when a request changed the hold)."""
        ev, self._changed = self._changed, None
        if ev is not None:
            ev.set()

    # ------------------------------------------------------------------ the runner

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the runner: the event loop delivers the mailbox's messages to :meth:`step`, and the host runs
        its tasks in ``tg`` (the stack's group). No task of the service's own: an idle service holds none, a
        running one only its run's (a task is ~3 KiB, and a stack holds hundreds of services)."""
        self.host.bind(tg)
        self.mailbox.deliver_to(self.step)
        self.post(m.Poke())

    async def run(self) -> None:
        """The runner as a task of its own, until it has nothing left to do (:meth:`start`, then wait)."""
        async with anyio.create_task_group() as tg:
            self.start(tg)
            await self.finished.wait()

    def step(self, msg: m.Message) -> None:
        """Handle one message; the runner ends once it has nothing left to do (later messages are dropped)."""
        try:
            self.handle(msg)
        except Exception as e:  # a bug must not take the stack down silently
            self.stack.say(f"{self.name}: internal error handling {type(msg).__name__}: "
                           f"{type(e).__name__}: {e}")
        if self.finished_running() and not self.done:
            self.mailbox.close()
            self.done = True
            if self._finished is not None:
                self._finished.set()

    def finished_running(self) -> bool:
        """Whether the runner has nothing left to do (the stack stops, or the unit was removed)."""
        if self.inst is not None:
            return False
        return (self.stack.shutting_down and self.state != S.STOPPING) or self.removed

    def handle(self, msg: m.Message) -> None:
        if isinstance(msg, m.InstanceMessage) and msg.inst is not self.inst:
            return  # a message from an earlier run
        match msg:
            case m.Poke():
                self.evaluate()
            case m.Resolved(unit=unit):
                self.take_unit(unit)
            case m.Spawned(inst=inst):
                self._on_spawned(inst)
            case m.Ready(inst=inst):
                self._on_ready(inst)
            case m.ReadyTimeout(inst=inst, why=why):
                self._on_ready_timeout(inst, why)
            case m.RuleHit(inst=inst, rule=idx, line=line, before=before):
                self._on_rule(inst, idx, line, before)
            case m.LiveFailed(inst=inst, failures=failures, why=why):
                streak = self.live_failures
                if not (self.unit.external and external.live_failed(self, inst, failures, why)):
                    liveness.live_failed(self, inst, failures, why)
                self.counters.live_failed(streak, self.live_failures)
            case m.LiveRecovered(inst=inst):
                liveness.live_recovered(self, inst)
            case m.Exited(inst=inst, code=code, failure=failure):
                self.counters.exited(code)
                exits.on_exit(self, inst, code, failure)
            case m.BackoffDone(token=token):
                self._on_backoff_done(token)
            case m.StartRequest():
                requests.start(self)
            case m.StopRequest(handled=handled):
                requests.stop(self)
                if handled is not None:
                    handled()
            case m.RestartRequest():
                requests.restart(self)
            case m.Shutdown():
                self.backoff_token += 1
                self.evaluate()
            case m.Replace(unit=unit, splan=splan, restart=restart):
                requests.replace(self, unit, splan, restart)
            case m.Remove():
                self.removed = True
                self.evaluate()
            case _:
                raise TypeError(f"unknown message {msg!r}")

    def evaluate(self) -> None:
        """Decide what to do now: start, keep waiting, fail because of a dependency, or stop for one."""
        stack = self.stack
        if self.state == S.DISABLED and not self.removed:
            return
        if self.unit.external:   # runs elsewhere: probed whatever its own dependencies do
            external.evaluate(self)
            return
        if stack.shutting_down or self.removed:
            if self.inst is None:
                if self.state not in (S.FAILED, S.DISABLED):
                    self.set_state(S.STOPPED)
                return
            if not self.inst.terminating and not stack.dependents_running(self.name):
                self.begin_stop(StopReason.SHUTDOWN if stack.shutting_down else StopReason.RELOAD)
            return
        if self.inst is not None:
            if self.inst.terminating:
                return
            for d in stack.requires(self.name):
                dep = stack.service(d)
                if dep.state == S.FAILED:
                    self.last_error = f"requires {d}, which failed"
                    self.begin_stop(StopReason.DEP_FAIL)
                    return
                if dep.hold is Hold.USER:
                    self.begin_stop(StopReason.DEP_WAIT)
                    return
            liveness.follow_peers(self, stack.restart_with(self.name))
            return
        if self.state == S.BACKOFF or self.hold is not None:
            return
        verdict, why = stack.deps_verdict(self.name)
        if verdict is DepVerdict.FAIL:
            self.last_error = why
            if self.state != S.FAILED:
                self.set_state(S.FAILED, why)
        elif verdict is DepVerdict.WAIT:
            if self.state != S.WAITING:
                self.set_state(S.WAITING, why)
        else:
            self.launch()

    # ------------------------------------------------------------------ start

    def launch(self, message: str | None = None, state: ServiceState | None = None) -> None:
        external.fit_host(self, self.make_host)
        self.instances += 1
        inst = Instance(self.instances)
        self.inst = inst
        self.exit_code = None
        self.live_failures = 0
        liveness.note_peers(self, self.stack.restart_with(self.name))
        self.set_state(state or (S.PREPARING if self.spec.prepare and not self.unit.external else S.STARTING),
                       message)
        self.host.launch(inst)

    def take_unit(self, unit: ResolvedUnit) -> None:
        """A newly resolved unit (at each start, and on reload): rule windows start afresh."""
        self.unit = unit
        self.policy.spec = unit.spec.restart
        self.rule_hits = [RuleWindow(r) for r in unit.rules]

    def _on_spawned(self, inst: Instance) -> None:
        if self.state != S.STARTING:
            self.set_state(S.STARTING, f"pid {inst.pid}")
        else:
            self.stack.record(self, S.STARTING, f"pid {inst.pid}")
        if inst.terminating:   # a stop arrived while preparing
            self.host.stop(inst, self._stop_timeout())

    def _on_ready(self, inst: Instance) -> None:
        if inst.terminating:
            return
        now = self.stack.clock()
        inst.ready_at = now
        self.ready_after = now - (inst.spawned_at or now)
        self.last_error = None
        self.set_state(S.READY, f"after {self.ready_after:.3f}s")

    def _on_ready_timeout(self, inst: Instance, why: str) -> None:
        if inst.terminating:
            return
        if self.unit.external:   # a remote service may come later: said once, and it keeps probing
            external.ready_timeout(self, inst, why)
            return
        msg = f"not ready within {self.unit.ready.timeout:g}s: {why}"
        self.last_error = msg
        self.stack.say(f"{self.name}: {msg}")
        self.begin_stop(StopReason.READY_TIMEOUT, failure=msg)

    def _on_rule(self, inst: Instance, idx: int, line: bytes, before: list[bytes]) -> None:
        rule = self.unit.rules[idx]
        self.counters.rule_hit(rule.match)
        if not self.rule_hits[idx].hit(self.stack.clock()):
            return
        report = RuleReport.of(self.name, rule, line, before)
        self.stack.say(report.text)
        self.host.log_line(report.log_line)
        if rule.action == "warn" or inst.terminating:
            return
        self.last_error = report.summary
        if rule.action == "abort":
            self.stack.abort(f"{self.name}: {report.summary}")
        elif rule.action == "restart":
            self.begin_stop(StopReason.RULE_RESTART, failure=report.summary)
        elif rule.action == "fail":
            self.begin_stop(StopReason.RULE_FAIL, failure=report.summary)

    # ------------------------------------------------------------------ stop

    def _stop_timeout(self) -> float:
        timeout = self.spec.stop.timeout
        if self.stack.shutting_down:
            timeout = max(0.0, min(timeout, self.stack.budget_left()))
        return timeout

    def begin_stop(self, reason: StopReason, failure: str | None = None, why: str | None = None) -> None:
        """Stop the run for ``reason`` (``failure``: the run counts as failed, for that; ``why``: the event's
        words after the reason)."""
        inst = self.inst
        if inst is None:
            return
        if inst.terminating:
            if reason in (StopReason.SHUTDOWN, StopReason.USER):
                inst.stop_reason = reason
            return
        inst.terminating = True
        inst.stop_reason = reason
        inst.failure = failure
        self.set_state(S.STOPPING, f"{reason}: {why}" if why else reason)
        self.host.stop(inst, self._stop_timeout())

    def kill_now(self) -> None:
        inst = self.inst
        if inst is None:
            return
        if inst.pid is not None:
            inst.terminating = True
        self.host.kill(inst)

    def _on_backoff_done(self, token: int) -> None:
        if token != self.backoff_token or self.state != S.BACKOFF:
            return
        self.set_state(S.WAITING)
        self.evaluate()

    # ------------------------------------------------------------------ status

    def _notify_text(self, inst: Instance | None) -> str | None:
        said = getattr(self.host, "notify_text", None)   # the real host's sd_notify; a fake one has none
        return said(inst) if inst is not None and callable(said) else None

    def status(self, waiting_on: str | None = None) -> ServiceStatus:
        """The service's row of the status JSON (``waiting_on``: what it waits on while it starts)."""
        now = self.stack.clock()
        inst = self.inst
        pid = self.host.live_pid(inst) if inst is not None else None
        uptime = now - inst.spawned_at if inst is not None and inst.spawned_at is not None else None
        return service_status(name=self.name, state=self.state, pid=pid, restarts=self.restarts,
                              uptime_s=uptime, ready_after_s=self.ready_after, exit_code=self.exit_code,
                              last_error=self.last_error if self.state != S.DISABLED or self.last_error
                              else f"disabled by the plan: {self.splan.reason}",
                              gpu=self.splan.env.get("CUDA_VISIBLE_DEVICES"),
                              state_since=wall_time(self.state_since, now), ready_timeout_s=self.unit.ready.timeout,
                              counters=self.counters.to_json(), waiting_on=waiting_on,
                              notify=self._notify_text(inst), external=self.unit.external)
