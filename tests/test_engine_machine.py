"""The engine's state machine and restart policy, in-process: a fake clock, a fake process host, no processes.

Each test builds a real plan from unit files, hands the real :class:`~supervisor.engine.engine.Engine` a fake
host per service (it records what the machine asked for: launch, stop, kill, timers) and plays the part of the
processes by posting the messages a real host would post (``Spawned``, ``Ready``, ``Exited``, ...). Messages are
delivered one at a time, in order, until every mailbox is empty: the same order a runner gives them, without
the scheduler. These tests run in milliseconds; the end-to-end suite (tests/test_engine_*.py) runs the same
machine with real processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from supervisor.config.loader import load_config
from supervisor.config.spec import RestartSpec
from supervisor.engine import messages as m
from supervisor.engine.engine import Engine
from supervisor.engine.errors import Conflict, UnknownService
from supervisor.engine.instance import Instance
from supervisor.engine.policy import GiveUp, Restart, RestartPolicy, Settle
from supervisor.engine.service import Service
from supervisor.engine.settle import check_control
from supervisor.engine.states import Hold, ServiceState, StopReason
from supervisor.errors import Problems
from supervisor.plan.build import make_plan

from conftest import make_stack

S = ServiceState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeHost:
    """Records what the state machine asks of its host; the test plays the processes."""

    svc: Service
    world: World
    calls: list[tuple] = field(default_factory=list)

    def bind(self, tg) -> None:
        pass

    def launch(self, inst: Instance) -> None:
        self.calls.append(("launch", inst.number))

    def stop(self, inst: Instance, timeout: float) -> None:
        self.calls.append(("stop", inst.number, timeout))

    def kill(self, inst: Instance) -> None:
        self.calls.append(("kill", inst.number))

    def start_timer(self, token: int, delay: float) -> None:
        self.world.timers.append((self.svc.name, token, delay))

    def live_pid(self, inst: Instance) -> int | None:
        return inst.pid

    def log_line(self, text: str) -> None:
        self.calls.append(("log", text))

    def replaced(self, unit, splan) -> None:
        self.calls.append(("replaced",))

    def close(self) -> None:
        pass


class World:
    """A stack run by the real engine with fake hosts and a fake clock."""

    def __init__(self, tmp_path: Path, units: dict[str, str], stack_toml: str | None = None) -> None:
        config = load_config(cwd=make_stack(tmp_path, units, stack_toml))
        probs = Problems()
        plan = make_plan(config, {}, [], probs, environ={}, check_paths=False)
        assert not probs.items, probs.items
        self.clock = FakeClock()
        self.said: list[str] = []
        self.timers: list[tuple[str, int, float]] = []
        self.hosts: dict[str, FakeHost] = {}
        self._pids: Iterator[int] = itertools.count(4000)

        def host(svc: Service) -> FakeHost:
            h = self.hosts[svc.name] = FakeHost(svc, self)
            return h

        self.engine = Engine(plan, None, echo=None, say=self.said.append, clock=self.clock,
                             jitter=lambda: 1.0, host=host)
        for svc in self.engine.services.values():
            svc.post(m.Poke())   # what each runner posts first
        self.settle()

    # -- delivery

    def svc(self, name: str) -> Service:
        return self.engine.services[name]

    def settle(self) -> None:
        """Deliver every queued message, one at a time per service, until all mailboxes are empty."""
        for _ in range(10_000):
            moved = False
            for svc in list(self.engine.services.values()):
                msg = svc.mailbox.get_nowait()
                if msg is not None:
                    svc.handle(msg)
                    moved = True
            if not moved:
                return
        raise AssertionError("messages keep coming")

    def post(self, name: str, msg: m.Message) -> None:
        self.svc(name).post(msg)
        self.settle()

    # -- playing the processes

    def inst(self, name: str) -> Instance:
        inst = self.svc(name).inst
        assert inst is not None, f"{name} has no instance ({self.svc(name).state})"
        return inst

    def spawn(self, name: str) -> Instance:
        inst = self.inst(name)
        inst.pid, inst.spawned_at = next(self._pids), self.clock()
        self.post(name, m.Spawned(inst))
        return inst

    def up(self, name: str) -> None:
        """Spawned, then ready."""
        inst = self.spawn(name)
        self.post(name, m.Ready(inst))
        assert self.svc(name).state == S.READY

    def exit(self, name: str, code: int | None = 0, failure: str | None = None) -> None:
        self.post(name, m.Exited(self.inst(name), code, failure))

    def fire(self, name: str) -> float:
        """Fire the latest back-off timer of ``name``; returns its delay."""
        mine = [t for t in self.timers if t[0] == name]
        assert mine, f"no timer for {name}"
        _, token, delay = mine[-1]
        self.clock.advance(delay)
        self.post(name, m.BackoffDone(token))
        return delay

    def launches(self, name: str) -> int:
        return sum(1 for c in self.hosts[name].calls if c[0] == "launch")

    def stops(self, name: str) -> list[tuple]:
        return [c for c in self.hosts[name].calls if c[0] == "stop"]


def unit(extra: str = "") -> str:
    return 'command = ["x"]\n' + extra


# ------------------------------------------------------------------------------------------ the pure policy

def test_policy_doubles_the_delay_up_to_max_delay():
    policy = RestartPolicy(RestartSpec(policy="always", delay=1.0, max_delay=5.0, max_restarts=100))
    delays = []
    for i in range(5):
        d = policy.decide(now=float(i), failed=True, ready_for=0.0, forced=False, jitter=1.0)
        assert isinstance(d, Restart)
        delays.append(d.delay)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_policy_applies_the_jitter_to_the_delay_not_to_the_schedule():
    policy = RestartPolicy(RestartSpec(policy="always", delay=2.0))
    first = policy.decide(now=0.0, failed=True, ready_for=0.0, forced=False, jitter=1.1)
    second = policy.decide(now=1.0, failed=True, ready_for=0.0, forced=False, jitter=0.9)
    assert first == Restart(pytest.approx(2.2)) and second == Restart(pytest.approx(3.6))


def test_policy_gives_up_after_max_restarts_within_the_window_only():
    spec = RestartSpec(policy="always", delay=0.5, max_restarts=3, window=60.0, on_give_up="abort")
    policy = RestartPolicy(spec)
    for t in (0.0, 10.0, 20.0):
        assert isinstance(policy.decide(now=t, failed=True, ready_for=0.0, forced=False, jitter=1.0), Restart)
    assert policy.decide(now=30.0, failed=True, ready_for=0.0, forced=False, jitter=1.0) == GiveUp(3, 60.0, True)
    # the first restart (t=0) leaves the window at t>60: one more is allowed
    later = RestartPolicy(spec)
    for t in (0.0, 10.0, 20.0):
        later.decide(now=t, failed=True, ready_for=0.0, forced=False, jitter=1.0)
    assert isinstance(later.decide(now=61.0, failed=True, ready_for=0.0, forced=False, jitter=1.0), Restart)


def test_policy_on_failure_settles_a_clean_exit_and_never_settles_everything():
    on_failure = RestartPolicy(RestartSpec(policy="on-failure"))
    assert on_failure.decide(now=0, failed=False, ready_for=0, forced=False, jitter=1) == Settle(False)
    assert isinstance(on_failure.decide(now=0, failed=True, ready_for=0, forced=False, jitter=1), Restart)
    never = RestartPolicy(RestartSpec(policy="never"))
    assert never.decide(now=0, failed=True, ready_for=0, forced=False, jitter=1) == Settle(True)
    # a restart rule forces a restart whatever the policy says
    assert isinstance(never.decide(now=0, failed=True, ready_for=0, forced=True, jitter=1), Restart)


def test_policy_a_long_healthy_run_resets_the_back_off():
    policy = RestartPolicy(RestartSpec(policy="always", delay=1.0, reset_after=100.0, max_restarts=2))
    for t in (0.0, 1.0):
        policy.decide(now=t, failed=True, ready_for=5.0, forced=False, jitter=1.0)
    assert policy.delay == 4.0 and len(policy.recent) == 2
    d = policy.decide(now=2.0, failed=True, ready_for=100.0, forced=False, jitter=1.0)
    assert d == Restart(1.0)   # no give-up either: the history was forgotten


# ------------------------------------------------------------------------------------------ the machine

def test_a_crashing_service_backs_off_doubling_then_gives_up(tmp_path):
    w = World(tmp_path, {"web": unit('[restart]\npolicy = "always"\ndelay = "1s"\nmax_delay = "3s"\n'
                                     'max_restarts = 3\nwindow = "10m"\n')})
    assert w.launches("web") == 1 and w.svc("web").state == S.STARTING
    delays = []
    for _ in range(3):
        w.spawn("web")
        w.exit("web", 1)
        assert w.svc("web").state == S.BACKOFF
        delays.append(w.fire("web"))
    assert delays == [1.0, 2.0, 3.0]
    assert w.launches("web") == 4 and w.svc("web").restarts == 3
    w.spawn("web")
    w.exit("web", 1)
    svc = w.svc("web")
    assert svc.state == S.FAILED and svc.hold is Hold.FAILED
    assert svc.last_error == "gave up after 3 restarts within 600s; last error: exited with code 1"
    assert "web: gave up after 3 restarts within 600s; last error: exited with code 1" in w.said
    assert w.engine.abort_reason is None


def test_give_up_with_on_give_up_abort_aborts_the_stack(tmp_path):
    w = World(tmp_path, {"web": unit('[restart]\npolicy = "always"\nmax_restarts = 1\non_give_up = "abort"\n'),
                         "db": unit()})
    w.spawn("web")
    w.exit("web", 3)
    w.fire("web")
    w.spawn("web")
    w.exit("web", 3)
    assert w.engine.abort_reason is not None and w.engine.abort_reason.startswith("web: gave up after 1 restarts")
    assert w.engine.shutting_down
    # the shutdown reaches the other service: its run is stopped with the stop budget's share of time
    assert w.stops("db") and w.svc("db").inst.stop_reason is StopReason.SHUTDOWN


def test_restarts_spread_wider_than_the_window_never_give_up(tmp_path):
    w = World(tmp_path, {"web": unit('[restart]\npolicy = "always"\ndelay = "1s"\nmax_restarts = 2\n'
                                     'window = "30s"\n')})
    for _ in range(6):
        w.spawn("web")
        w.clock.advance(31)
        w.exit("web", 1)
        assert w.svc("web").state == S.BACKOFF
        w.fire("web")
    assert w.svc("web").restarts == 6


def test_a_stale_message_from_an_earlier_run_is_ignored(tmp_path):
    w = World(tmp_path, {"web": unit('[restart]\npolicy = "always"\n')})
    first = w.spawn("web")
    w.exit("web", 1)
    w.fire("web")
    w.spawn("web")
    w.post("web", m.Ready(first))          # from the dead run
    assert w.svc("web").state == S.STARTING
    w.post("web", m.Exited(first, 0, None))
    assert w.svc("web").inst is not None and w.svc("web").state == S.STARTING


def test_a_dependency_starts_its_dependent_only_once_ready(tmp_path):
    w = World(tmp_path, {"db": unit(), "api": unit('requires = ["db"]\n')})
    assert w.launches("db") == 1 and w.launches("api") == 0
    assert w.svc("api").state == S.WAITING
    w.spawn("db")
    assert w.launches("api") == 0
    w.post("db", m.Ready(w.inst("db")))
    assert w.launches("api") == 1 and w.svc("api").state == S.STARTING


def test_a_failed_dependency_fails_what_requires_it(tmp_path):
    w = World(tmp_path, {"db": unit('[restart]\npolicy = "never"\n'), "api": unit('requires = ["db"]\n')})
    w.up("db")
    w.up("api")
    w.exit("db", 2)
    assert w.svc("db").state == S.FAILED
    api = w.svc("api")
    assert api.state == S.STOPPING and api.inst.stop_reason is StopReason.DEP_FAIL and w.stops("api")
    w.exit("api", 143)
    assert api.state == S.FAILED and api.last_error == "requires db, which failed"
    # it is not started again while db stays failed
    assert w.launches("api") == 1


def test_a_user_stopped_dependency_makes_dependents_wait_and_come_back(tmp_path):
    w = World(tmp_path, {"db": unit(), "api": unit('requires = ["db"]\n')})
    w.up("db")
    w.up("api")
    w.post("db", m.StopRequest())
    assert w.svc("db").hold is Hold.USER and w.svc("db").state == S.STOPPING
    assert w.svc("api").inst.stop_reason is StopReason.DEP_WAIT
    w.exit("api", 143)
    assert w.svc("api").state == S.WAITING and w.svc("api").last_error is None
    w.exit("db", 143)
    assert w.svc("db").state == S.STOPPED
    w.post("db", m.StartRequest())
    assert w.launches("db") == 2
    w.up("db")
    assert w.launches("api") == 2


def test_shutdown_stops_dependents_before_what_they_require(tmp_path):
    w = World(tmp_path, {"db": unit(), "api": unit('requires = ["db"]\n')}, "[stack]\nstop_budget = \"30s\"\n")
    w.up("db")
    w.up("api")
    w.engine.begin_shutdown("test")
    w.settle()
    assert w.stops("api") and not w.stops("db"), "db must wait for api to be gone"
    assert w.stops("api")[0][2] == 10.0           # [stop] timeout, within the budget
    w.clock.advance(25)
    w.exit("api", 0)
    assert w.svc("api").state == S.STOPPED
    (stop,) = w.stops("db")
    assert stop[2] == pytest.approx(5.0)          # what is left of the 30 s budget


def test_an_error_rule_counts_hits_within_its_window(tmp_path):
    w = World(tmp_path, {"web": unit('[[on_log]]\nmatch = "boom"\naction = "fail"\ncount = 2\n'
                                     'within = "10s"\n')})
    inst = w.spawn("web")
    w.post("web", m.RuleHit(inst, 0, b"boom 1", []))
    w.clock.advance(11)
    w.post("web", m.RuleHit(inst, 0, b"boom 2", []))   # the first hit left the window
    assert w.svc("web").state == S.STARTING
    w.clock.advance(1)
    w.post("web", m.RuleHit(inst, 0, b"boom 3", [b"before"]))
    svc = w.svc("web")
    assert svc.state == S.STOPPING and inst.stop_reason is StopReason.RULE_FAIL
    w.exit("web", 143)
    assert svc.state == S.FAILED and svc.hold is Hold.FAILED and "boom 3" in (svc.last_error or "")
    assert w.launches("web") == 1


def test_a_restart_rule_restarts_even_under_policy_never(tmp_path):
    w = World(tmp_path, {"web": unit('[restart]\npolicy = "never"\n'
                                     '[[on_log]]\nmatch = "stuck"\naction = "restart"\n')})
    inst = w.spawn("web")
    w.post("web", m.RuleHit(inst, 0, b"stuck", []))
    w.exit("web", 143)
    assert w.svc("web").state == S.BACKOFF
    w.fire("web")
    assert w.launches("web") == 2


def test_a_ready_timeout_stops_the_run_and_counts_as_a_failure(tmp_path):
    w = World(tmp_path, {"web": unit('[ready]\nlog = "up"\ntimeout = "5s"\n')})
    inst = w.spawn("web")
    w.post("web", m.ReadyTimeout(inst, "log 'up' not seen yet"))
    svc = w.svc("web")
    assert svc.state == S.STOPPING and svc.last_error == "not ready within 5s: log 'up' not seen yet"
    w.exit("web", 143)
    assert svc.state == S.BACKOFF and svc.restarts == 1


def test_a_clean_exit_under_on_failure_is_stopped_not_failed(tmp_path):
    w = World(tmp_path, {"job": unit()})
    w.spawn("job")
    w.exit("job", 0)
    svc = w.svc("job")
    assert svc.state == S.STOPPED and svc.hold is None and svc.exit_code == 0


def test_a_start_failure_is_reported_and_backs_off(tmp_path):
    w = World(tmp_path, {"web": unit()})
    w.exit("web", None, "cannot run 'x': no such file")   # never spawned
    assert "web: start failed: cannot run 'x': no such file" in w.said
    assert w.svc("web").state == S.BACKOFF


def test_a_stop_while_preparing_stops_once_spawned(tmp_path):
    w = World(tmp_path, {"web": unit('[prepare]\ncommand = ["true"]\n')})
    assert w.svc("web").state == S.PREPARING
    w.post("web", m.StopRequest())
    assert w.svc("web").state == S.STOPPING and len(w.stops("web")) == 1   # cancels the prepare
    w.spawn("web")                                                             # it had got past it
    assert len(w.stops("web")) == 2
    w.exit("web", 143)
    assert w.svc("web").state == S.STOPPED


def test_restart_while_backing_off_starts_now_and_forgets_the_history(tmp_path):
    w = World(tmp_path, {"web": unit('[restart]\npolicy = "always"\ndelay = "5s"\n')})
    w.spawn("web")
    w.exit("web", 1)
    assert w.svc("web").state == S.BACKOFF
    w.post("web", m.RestartRequest())
    assert w.launches("web") == 2 and not w.svc("web").policy.recent
    # the old timer fires later: stale, it starts nothing
    w.fire("web")
    assert w.launches("web") == 2


def test_kill_now_marks_a_spawned_run_terminating_and_kills_it(tmp_path):
    w = World(tmp_path, {"web": unit()})
    inst = w.spawn("web")
    w.engine.kill_now()
    w.settle()
    assert ("kill", 1) in w.hosts["web"].calls and inst.terminating


def test_status_rows_and_domain_errors(tmp_path):
    w = World(tmp_path, {"web": unit(), "off": unit("enabled = false\n")})
    w.clock.advance(2)
    w.spawn("web")
    w.clock.advance(0.5)
    w.post("web", m.Ready(w.inst("web")))
    st = w.engine.status()
    row = next(s for s in st["services"] if s["name"] == "web")
    assert row["state"] == "ready" and row["pid"] == 4000 and row["ready_after_s"] == 0.5
    assert list(row) == ["name", "state", "pid", "restarts", "uptime_s", "ready_after_s", "exit_code",
                         "last_error", "gpu", "state_since", "ready_timeout_s", "counters", "waiting_on",
                         "notify", "external"]
    assert st["stack"]["state"] == "ready"
    with pytest.raises(UnknownService):
        w.engine._get("nope")
    with pytest.raises(Conflict, match="disabled by the plan"):
        check_control(w.svc("off"))


def test_reload_restarts_a_changed_running_service_and_clears_a_failed_hold(tmp_path):
    w = World(tmp_path, {"web": unit(), "job": unit('[restart]\npolicy = "never"\n')})
    w.up("web")
    w.spawn("job")
    w.exit("job", 1)
    assert w.svc("job").hold is Hold.FAILED
    for name in ("web", "job"):
        svc = w.svc(name)
        w.post(name, m.Replace(svc.unit, svc.splan, True))
    assert w.svc("web").inst.stop_reason is StopReason.RELOAD and ("replaced",) in w.hosts["web"].calls
    w.exit("web", 143)
    assert w.launches("web") == 2
    assert w.svc("job").hold is None and w.launches("job") == 2   # a changed unit gets another chance


def test_reload_disabling_a_running_service_stops_it(tmp_path):
    w = World(tmp_path, {"web": unit()})
    w.up("web")
    svc = w.svc("web")
    from dataclasses import replace as dc_replace
    w.post("web", m.Replace(svc.unit, dc_replace(svc.splan, enabled=False, reason="test"), True))
    assert svc.state == S.DISABLED and w.stops("web")
    w.exit("web", 143)
    assert svc.state == S.DISABLED and w.launches("web") == 1


# ------------------------------------------------------------------------------------------ [live] actions

def live(action: str, extra: str = "") -> str:
    return unit(f'[live]\ntcp = "127.0.0.1:9"\nfailures = 3\naction = "{action}"\n' + extra)


def events(w: World, name: str) -> list[dict]:
    got: list[dict] = []
    w.engine.events.emit = got.append   # type: ignore[method-assign]
    return got


def test_live_restart_stops_and_starts_again_as_a_failure(tmp_path):
    w = World(tmp_path, {"web": live("restart", '[restart]\npolicy = "never"\ndelay = "2s"\n')})
    w.up("web")
    seen = events(w, "web")
    inst = w.inst("web")
    w.post("web", m.LiveFailed(inst, 3, "127.0.0.1:9: connection refused"))
    svc = w.svc("web")
    text = "liveness: 3 failed checks in a row: 127.0.0.1:9: connection refused"
    assert svc.state == S.STOPPING and inst.stop_reason is StopReason.LIVE_RESTART and w.stops("web")
    assert svc.last_error == text and f"web: {text}: restarting it" in w.said
    assert seen[-1]["state"] == "stopping" and seen[-1]["message"] == f"live-restart: {text}"
    w.post("web", m.LiveFailed(inst, 4, "again"))    # a later round while stopping: nothing more
    assert len(w.stops("web")) == 1
    w.exit("web", 143)
    # policy "never" does not stop it: the action asked for the restart; it counts (back-off applies)
    assert svc.state == S.BACKOFF and svc.restarts == 1 and svc.last_error == text
    assert w.fire("web") == 2.0 and w.launches("web") == 2
    w.up("web")
    assert svc.last_error is None


def test_repeated_live_restarts_back_off_then_give_up(tmp_path):
    w = World(tmp_path, {"web": live("restart", '[restart]\ndelay = "1s"\nmax_restarts = 2\nwindow = "10m"\n'),
                         "api": unit('requires = ["web"]\n')})
    delays = []
    for _ in range(2):
        w.up("web")
        w.post("web", m.LiveFailed(w.inst("web"), 3, "refused"))
        w.exit("web", 143)
        delays.append(w.fire("web"))
    assert delays == [1.0, 2.0]
    w.up("web")
    w.post("web", m.LiveFailed(w.inst("web"), 3, "refused"))
    w.exit("web", 143)
    svc = w.svc("web")
    assert svc.state == S.FAILED and svc.hold is Hold.FAILED
    assert svc.last_error == ("gave up after 2 restarts within 600s; last error: "
                              "liveness: 3 failed checks in a row: refused")
    assert w.launches("web") == 3


def test_live_fail_stops_and_holds_it_failed(tmp_path):
    w = World(tmp_path, {"db": live("fail"), "api": unit('requires = ["db"]\n')})
    w.up("db")
    w.up("api")
    inst = w.inst("db")
    w.post("db", m.LiveFailed(inst, 3, "timed out"))
    assert inst.stop_reason is StopReason.LIVE_FAIL and w.svc("db").state == S.STOPPING
    assert "db: liveness: 3 failed checks in a row: timed out: stopping it (action fail: it stays failed " \
           "until started)" in w.said
    w.exit("db", 143)
    db = w.svc("db")
    assert db.state == S.FAILED and db.hold is Hold.FAILED and db.restarts == 0
    assert db.last_error == "liveness: 3 failed checks in a row: timed out"
    assert w.svc("api").inst.stop_reason is StopReason.DEP_FAIL     # what requires it fails too
    w.exit("api", 143)
    assert w.launches("db") == 1 and w.svc("api").state == S.FAILED
    w.post("db", m.StartRequest())                                   # a user's start clears the hold
    assert w.launches("db") == 2


def test_live_warn_stays_ready_counts_and_clears_on_recovery(tmp_path):
    w = World(tmp_path, {"web": live("warn")})
    w.up("web")
    seen = events(w, "web")
    inst = w.inst("web")
    w.post("web", m.LiveFailed(inst, 3, "answered 503"))
    w.post("web", m.LiveFailed(inst, 4, "answered 500"))
    svc = w.svc("web")
    assert svc.state == S.READY and not w.stops("web") and w.engine.stack_state() == "ready"
    assert svc.last_error == "liveness: 4 failed checks in a row: answered 500"
    said = [s for s in w.said if "liveness" in s]
    assert said == ["web: liveness: 3 failed checks in a row: answered 503 (action warn: it stays ready)"]
    assert [e["message"] for e in seen] == ["liveness: 3 failed checks in a row: answered 503"]
    assert seen[0]["state"] == seen[0]["prev"] == "ready"
    w.post("web", m.LiveRecovered(inst))
    assert svc.last_error is None and svc.state == S.READY and "web: liveness: checks pass again" in w.said
    assert seen[-1]["message"] == "liveness: checks pass again"
    w.post("web", m.LiveRecovered(inst))                            # nothing to recover from: silent
    assert w.said.count("web: liveness: checks pass again") == 1
    w.post("web", m.LiveFailed(inst, 3, "answered 503"))             # a new streak is said again
    assert len([s for s in w.said if "failed checks" in s]) == 2


def test_live_messages_count_only_while_ready_and_not_stopping(tmp_path):
    w = World(tmp_path, {"web": live("restart")})
    inst = w.spawn("web")
    w.post("web", m.LiveFailed(inst, 3, "early"))                   # starting: the loop runs only once ready
    assert w.svc("web").state == S.STARTING and not w.stops("web") and w.svc("web").last_error is None
    w.post("web", m.Ready(inst))
    w.post("web", m.StopRequest())
    w.post("web", m.LiveFailed(inst, 3, "while stopping"))
    assert inst.stop_reason is StopReason.USER and len(w.stops("web")) == 1
    w.exit("web", 143)
    assert w.svc("web").state == S.STOPPED and w.svc("web").last_error is None
    w.post("web", m.StartRequest())
    w.up("web")
    w.post("web", m.LiveFailed(inst, 3, "stale"))                   # from the earlier run: dropped
    assert w.svc("web").state == S.READY and w.svc("web").last_error is None


# ------------------------------------------------------------------------------------------ restart_with

CONTROLLER_WORKER = {"controller": unit('[restart]\npolicy = "always"\n'),
                     "worker": unit('requires = ["controller"]\nrestart_with = ["controller"]\n')}


def test_restart_with_restarts_the_follower_once_the_new_instance_is_ready(tmp_path):
    w = World(tmp_path, CONTROLLER_WORKER)
    w.up("controller")
    w.up("worker")
    seen = events(w, "worker")
    w.post("controller", m.RestartRequest())
    w.exit("controller", 143)
    w.spawn("controller")
    worker = w.svc("worker")
    assert worker.state == S.READY and not w.stops("worker"), "not before the new controller is ready"
    w.post("controller", m.Ready(w.inst("controller")))
    assert worker.state == S.STOPPING and worker.inst.stop_reason is StopReason.RESTART_WITH
    why = "restart with controller: controller has a new instance, ready"
    assert f"worker: {why}" in w.said
    assert [e["message"] for e in seen if e.get("service") == "worker"] == [f"restart-with: {why}"]
    w.exit("worker", 143)
    assert w.launches("worker") == 2 and worker.last_error is None and worker.restarts == 0
    w.up("worker")
    assert len(w.stops("worker")) == 1   # its own readiness restarts nothing


def test_restart_with_follows_a_crash_and_back_off_but_not_the_back_off_itself(tmp_path):
    w = World(tmp_path, CONTROLLER_WORKER)
    w.up("controller")
    w.up("worker")
    w.exit("controller", 1)
    assert w.svc("controller").state == S.BACKOFF and w.svc("worker").state == S.READY
    w.fire("controller")
    w.up("controller")
    assert w.svc("worker").inst.stop_reason is StopReason.RESTART_WITH


def test_restart_with_a_chain_restarts_each_after_the_one_before_is_ready(tmp_path):
    w = World(tmp_path, {"a": unit(), "b": unit('restart_with = ["a"]\n'), "c": unit('restart_with = ["b"]\n')})
    assert w.engine.graph.after == {"a": (), "b": ("a",), "c": ("b",)}   # restart_with implies after
    for n in "abc":
        w.up(n)
    w.post("a", m.RestartRequest())
    w.exit("a", 143)
    w.up("a")
    assert w.svc("b").state == S.STOPPING and w.svc("c").state == S.READY
    w.exit("b", 143)
    assert w.svc("c").state == S.READY and not w.stops("c")
    w.up("b")
    assert w.svc("c").inst.stop_reason is StopReason.RESTART_WITH
    w.exit("c", 143)
    w.up("c")
    assert [w.launches(n) for n in "abc"] == [2, 2, 2]
    assert [len(w.stops(n)) for n in "abc"] == [1, 1, 1]


def test_restart_with_not_at_shutdown_nor_after_a_stop_alone(tmp_path):
    units = {"controller": unit(), "worker": unit('restart_with = ["controller"]\n')}
    w = World(tmp_path, units)
    w.up("controller")
    w.up("worker")
    w.post("controller", m.StopRequest())
    w.exit("controller", 143)
    assert w.svc("controller").state == S.STOPPED
    assert w.svc("worker").state == S.READY and not w.stops("worker")   # only `after`: it keeps running
    w.post("controller", m.StartRequest())                             # a start after the stop: a new one
    w.up("controller")
    assert w.svc("worker").inst.stop_reason is StopReason.RESTART_WITH
    w.exit("worker", 143)
    w.up("worker")
    w.engine.begin_shutdown("test")
    w.settle()
    w.exit("worker", 0)
    w.exit("controller", 0)
    assert w.launches("worker") == 2 and w.launches("controller") == 2
    assert w.svc("worker").state == S.STOPPED


def test_restart_with_dependents_restarts_the_follower_once_only(tmp_path):
    w = World(tmp_path, CONTROLLER_WORKER)
    w.up("controller")
    w.up("worker")
    w.post("controller", m.RestartRequest())
    w.post("worker", m.RestartRequest())        # what `restart --with-dependents` posts
    w.exit("worker", 143)
    w.exit("controller", 143)
    assert w.svc("worker").state == S.WAITING
    w.up("controller")
    assert w.launches("worker") == 2 and w.svc("worker").inst.stop_reason is None
    w.up("worker")
    assert len(w.stops("worker")) == 1 and w.launches("worker") == 2


def test_restart_with_a_follower_not_running_just_follows_its_dependencies(tmp_path):
    w = World(tmp_path, {"controller": unit(), "worker": unit(
        'requires = ["controller"]\nrestart_with = ["controller"]\n[restart]\npolicy = "always"\ndelay = "5s"\n')})
    w.up("controller")
    w.up("worker")
    w.exit("worker", 1)
    assert w.svc("worker").state == S.BACKOFF
    w.post("controller", m.RestartRequest())
    w.exit("controller", 143)
    w.up("controller")
    assert w.svc("worker").state == S.BACKOFF and w.launches("worker") == 1
    w.fire("worker")
    assert w.launches("worker") == 2
    w.up("worker")
    assert len(w.stops("worker")) == 0


def test_restart_with_a_live_restart_of_the_named_service(tmp_path):
    w = World(tmp_path, {"controller": live("restart"), "worker": unit('restart_with = ["controller"]\n')})
    w.up("controller")
    w.up("worker")
    w.post("controller", m.LiveFailed(w.inst("controller"), 3, "refused"))
    w.exit("controller", 143)
    w.fire("controller")
    w.up("controller")
    assert w.svc("worker").inst.stop_reason is StopReason.RESTART_WITH


def test_reload_counts_a_changed_live_or_restart_with_as_a_change(tmp_path):
    from supervisor.engine.reload import fingerprint

    def plan_units(folder: str, worker: str):   # one stack folder, the worker's unit rewritten each time
        config = load_config(cwd=make_stack(tmp_path, {"controller": unit(), "worker": worker}))
        probs = Problems()
        plan = make_plan(config, {}, [], probs, environ={}, check_paths=False)
        assert not probs.items
        return fingerprint(plan.resolved["worker"], plan.services["worker"])

    base = plan_units("a", unit())
    assert plan_units("b", unit()) == base
    assert plan_units("c", unit('restart_with = ["controller"]\n')) != base
    assert plan_units("d", live("warn")) != base
    assert plan_units("e", live("warn")) != plan_units("f", live("restart"))
