"""The ``[live]`` loop (the I/O side of liveness): rounds, thresholds, recovery, the log check, real probes,
no task for a unit without ``[live]``; then end to end through ``qasup up``: an HTTP server that stops answering
(action warn, then recovered) and a heartbeat on the log that stops (action fail).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from supervisor.config.spec import StopSpec
from supervisor.engine import messages as m
from supervisor.engine.instance import Instance
from supervisor.engine.lifetime import Lifetime, Run
from supervisor.engine.states import ServiceState
from supervisor.logs.capture import make_pipe
from supervisor.plan.resolve import LiveChecks, ReadyChecks
from supervisor.proc.kernel import set_subreaper
from supervisor.proc.reaper import Reaper
from supervisor.readiness.live import LiveLog, LiveLoop, build_checks, run_round

from enginehelp import PY, free_port, poll, stack, up  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def live(**kw) -> LiveChecks:
    base = dict(log=None, http=None, tcp=None, exec=None, mode="all", timeout=0.5, interval=1.0, failures=3,
                action="restart")
    return LiveChecks(**{**base, **kw})


class Fake:
    """A check whose results are scripted; ``hang`` makes a try last forever."""

    name = "fake"

    def __init__(self, results: list[bool | str]) -> None:
        self.results = list(results)
        self.last_error: str | None = None
        self.closed = 0

    async def once(self) -> bool:
        r = self.results.pop(0) if self.results else True
        if r == "hang":
            await anyio.sleep_forever()
        if r == "raise":
            raise OSError("boom")
        self.last_error = None if r else "scripted failure"
        return bool(r)

    async def aclose(self) -> None:
        self.closed += 1


class Clock:
    """A fake clock: sleeping moves it forward at once."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.now += d
        await anyio.lowlevel.checkpoint()


async def run_rounds(loop: LiveLoop, n: int) -> None:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.run)
            while loop.rounds < n:
                await anyio.sleep(0)
            tg.cancel_scope.cancel()


async def test_threshold_every_failed_round_after_and_recovery():
    events: list[tuple] = []
    check = Fake([True, False, False, True, False, False, False, False, True, True])
    clock = Clock()
    loop = LiveLoop(live(failures=3, interval=2.0), [check], clock=clock, sleep=clock.sleep,
                    on_failed=lambda n, why: events.append(("failed", n, why)),
                    on_recovered=lambda: events.append(("recovered",)))
    await run_rounds(loop, 10)
    # a pass after two failures resets the count: nothing; then the 3rd and 4th failures in a row report
    assert events == [("failed", 3, "scripted failure"), ("failed", 4, "scripted failure"), ("recovered",)]
    assert clock.sleeps[:3] == [2.0, 2.0, 2.0], "one round every interval"
    assert check.closed == 10, "released after every round"


async def test_rounds_are_skipped_while_not_active():
    events: list[tuple] = []
    active = [False]
    check = Fake([False] * 10)
    clock = Clock()
    loop = LiveLoop(live(failures=2), [check], clock=clock, sleep=clock.sleep, active=lambda: active[0],
                    on_failed=lambda n, why: events.append((n,)), on_recovered=lambda: None)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.run)
            while len(clock.sleeps) < 5:
                await anyio.sleep(0)
            assert loop.rounds == 0 and check.results == [False] * 10
            active[0] = True
            while loop.rounds < 2:
                await anyio.sleep(0)
            tg.cancel_scope.cancel()
    assert events == [(2,)]


async def test_a_round_is_bounded_by_its_timeout_and_says_why():
    hang, bad, good = Fake(["hang"]), Fake(["raise"]), Fake([True])
    with anyio.fail_after(5):
        why = await run_round([hang, bad, good], "all", 0.2)
    assert why == "fake check: no answer within 0.2s (the [live] timeout); OSError: boom"
    assert hang.closed == bad.closed == good.closed == 1
    assert await run_round([Fake([False]), Fake([True])], "any", 0.2) is None
    assert await run_round([Fake([False]), Fake([False])], "any", 0.2) == "scripted failure; scripted failure"
    assert await run_round([Fake([True]), Fake([False])], "all", 0.2) == "scripted failure"


async def test_log_check_passes_only_on_a_line_since_the_previous_round():
    log = LiveLog("tick")
    log.hit()
    log.baseline()              # lines before the loop started do not count
    assert not await log.once()
    assert log.last_error == "no line matching 'tick' since the previous check"
    log.hit()
    log.hit()
    assert await log.once()
    assert not await log.once()


async def test_tcp_check_against_a_real_socket():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    log, checks = build_checks(live(tcp=("127.0.0.1", port), log="beat"), lambda argv, t: None)  # type: ignore
    assert log is not None and [c.name for c in checks] == ["log", "tcp"]
    log.hit()
    assert await run_round(checks, "all", 1.0) is None
    srv.close()
    why = await run_round(checks, "all", 1.0)
    assert why is not None and "no line matching 'beat'" in why and f"tcp 127.0.0.1:{port}" in why


# ---------------------------------------------------------------- the loop inside a real run (Lifetime)

class FakeService:
    """What a Lifetime touches of its service: it posts messages (collected here; Ready makes it ready)."""

    def __init__(self, inst: Instance) -> None:
        self.name = "svc"
        self.inst = inst
        self.state = ServiceState.STARTING
        self.messages: list[m.Message] = []
        self.got = anyio.Event()

    def post(self, msg: m.Message) -> None:
        self.messages.append(msg)
        if isinstance(msg, m.Ready):
            self.state = ServiceState.READY
        self.got.set()
        self.got = anyio.Event()

    async def wait_for(self, kind: type) -> m.Message:
        with anyio.fail_after(10):
            while not any(isinstance(x, kind) for x in self.messages):
                await self.got.wait()
        return next(x for x in self.messages if isinstance(x, kind))


def fake_unit(tmp: Path, live_checks: LiveChecks | None) -> SimpleNamespace:
    ready = ReadyChecks(log=None, http=None, tcp=None, exec=None, mode="all", timeout=10.0, interval=1.0)
    return SimpleNamespace(ready=ready, live=live_checks, cwd=tmp,
                           spec=SimpleNamespace(type="simple", pid_file=None, stop=StopSpec(timeout=2.0)))


def readiness_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if "_readiness" in t.get_name() and not t.done()]


@pytest.mark.parametrize("with_live", [False, True], ids=["no-live", "live"])
async def test_the_loop_exists_only_with_live_and_posts_live_failed(tmp_path, with_live):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    checks = live(tcp=("127.0.0.1", port), interval=0.05, timeout=0.5, failures=2) if with_live else None
    unit = fake_unit(tmp_path, checks)
    try:
        async with Reaper.open() as reaper:
            r, w = make_pipe()   # non-blocking, as the host makes it
            inst = Instance(1)
            run = Run(inst)
            run.child = await reaper.spawn_async([sys.executable, "-c", "import time; time.sleep(30)"],
                                                 cwd=tmp_path, env=dict(os.environ), stdout=w, stderr=w,
                                                 tag="svc")
            os.close(w)
            run.read_fd = r
            if checks is not None:
                run.live_log, run.live_checks = build_checks(checks, lambda argv, t: None)  # type: ignore
            svc = FakeService(inst)
            lifetime = Lifetime(svc, run, unit, sinks=[lambda b: None], flushes=[], say=print)  # type: ignore
            async with anyio.create_task_group() as tg:
                async def supervise() -> None:
                    await lifetime.supervise()

                tg.start_soon(supervise)
                await svc.wait_for(m.Ready)
                await anyio.sleep(0.2)   # a negative check: rounds would have run by now
                if not with_live:
                    assert readiness_tasks() == [], "no task is left for a unit without [live]"
                    assert not any(isinstance(x, m.LiveFailed) for x in svc.messages)
                else:
                    assert len(readiness_tasks()) == 1, "the loop runs in the readiness task"
                    assert not any(isinstance(x, m.LiveFailed) for x in svc.messages)
                    srv.close()
                    failed = await svc.wait_for(m.LiveFailed)
                    assert failed.inst is inst and failed.failures == 2
                    assert f"tcp 127.0.0.1:{port}" in failed.why
                os.kill(run.child.pid, 9)
            # the loop ended with the run
            assert readiness_tasks() == []
    finally:
        srv.close()
        set_subreaper(False)


# ---------------------------------------------------------------- end to end

HTTP = r'''
import http.server, os, sys, time
sick = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        while os.path.exists(sick):   # stops answering while the file exists
            time.sleep(0.05)
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
s.daemon_threads = True
print("listening", flush=True)
s.serve_forever()
'''


def test_http_server_that_stops_answering_warns_then_recovers(stack, up, tmp_path):
    (tmp_path / "live_http.py").write_text(HTTP)
    sick = tmp_path / "sick"
    port = free_port()
    stack.unit("web", command=[PY, "live_http.py", str(port), str(sick)], ready={"log": "^listening$"},
               live={"http": f"http://127.0.0.1:{port}/health", "interval": "200ms", "timeout": "300ms",
                     "failures": 2, "action": "warn"})
    u = up().start()
    u.wait_state("web", "ready")
    pid = u.service_status("web")["pid"]
    sick.write_text("")
    u.wait_out("web: liveness: 2 failed checks in a row", 10)
    st = poll(lambda: (s := u.service_status("web"))["last_error"] and s, 5, "the liveness error in status")
    assert st["state"] == "ready" and st["pid"] == pid, "warn: it stays ready, the same process"
    assert st["last_error"].startswith("liveness: ") and f"GET http://127.0.0.1:{port}/health" in st["last_error"]
    sick.unlink()
    u.wait_out("web: liveness: checks pass again", 10)
    poll(lambda: u.service_status("web")["last_error"] is None, 5, "the liveness error cleared")
    assert u.stop() == 0
    assert u.leftovers() == []


def test_heartbeat_on_the_log_that_stops_fails_the_service(stack, up, tmp_path):
    stack.unit("beat", command=["sh", "-c", "echo up; for i in 1 2 3 4 5 6; do echo tick; sleep 0.1; done; "
                                            "exec sleep 100"],
               ready={"log": "^up$"}, on_log=[{"match": "^tick$", "action": "warn", "count": 100}],
               live={"log": "^tick$", "interval": "250ms", "timeout": "100ms", "failures": 2, "action": "fail"})
    u = up().start()
    u.wait_state("beat", "ready")
    ev = u.wait_state("beat", "failed", 15)
    t_ready = u.first("beat", "ready")["ts"]
    assert ev["ts"] - t_ready > 0.6, "ticks kept it live while they came"
    st = u.service_status("beat")
    assert st["state"] == "failed" and "no line matching '^tick$' since the previous check" in st["last_error"]
    assert u.log("beat") == b"up\n" + b"tick\n" * 6
    assert u.stop() == 0
    assert u.leftovers() == []
