"""Sanic 25 with 4 workers under the shipped sanic unit (services.d/sanic.toml, with a drop-in that changes only
the program, its folder, port and log file): in-flight requests survive ``qasup stop`` and ``qasup restart``
(``[stop] mode = "main"``), nothing is left after a stop, a restart, a SIGKILL of a worker or of qasup, and the
shipped patterns match what Sanic 25 really prints (samples/sanic25-*.log, made by samples/capture_sanic.py).

What Sanic 25 does when one of its workers is SIGKILLed: nothing. Its main process neither restarts the worker
nor logs it, and serves on with the other three; qasup sees a live main process and keeps the service ready.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import need
from .kit import ONE_4090, PY, REPO, START_TIMEOUT, UNITS, Daemon, Work, all_procs, free_port, poll, unshare_problem

pytest.importorskip("sanic", reason="sanic is a test dependency (pip install -e '.[test]')")

SHIPPED = ("local", "cloud")   # the plans of the one sanic unit: sanic.toml alone, and with sanic.d/cloud.toml
SAMPLES = Path(__file__).resolve().parent / "samples"
APPS = REPO / "tests" / "apps"


# ------------------------------------------------------------------------------------------ the stack

def sanic_stack(work: Work, *dropins: str, pid1: bool = False) -> tuple[Daemon, int]:
    """The shipped services.d/sanic.toml, units/sanic.d/10-integration.toml over it, then ``dropins``; a
    daemon (not started) and the port Sanic listens on."""
    port = free_port()
    work.stack_file("""
        [stack]
        name = "it-sanic"
        stop_budget = "60s"
    """)
    work.add_unit("sanic", REPO / "services.d" / "sanic.toml")
    d = work.stack / "services.d" / "sanic.d"
    d.mkdir()
    for name in ("10-integration.toml", *dropins):
        shutil.copyfile(UNITS / "sanic.d" / name, d / name)
    env = {"IT_PORT": str(port), "IT_DIR": str(work.dir), "IT_APPS": str(APPS),
           "IT_SANIC": str(Path(PY).with_name("sanic")), "QASUP_GPUS": ONE_4090}
    return work.daemon(env, pid1=pid1), port


def get(port: int, path: str, timeout: float = 60) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        assert r.status == 200
        return json.loads(r.read())


class InFlight:
    """A slow request (``/slow?s=SECONDS``) in a thread; ``started()`` returns once Sanic's worker runs it."""

    def __init__(self, work: Work, port: int, tag: str, seconds: float = 3) -> None:
        self.work, self.tag = work, tag
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(port, seconds), daemon=True)
        self.thread.start()

    def _run(self, port: int, seconds: float) -> None:
        try:
            self.result = get(port, f"/slow?s={seconds}&tag={self.tag}")
        except BaseException as e:   # noqa: BLE001 (reported by the test)
            self.error = e

    def started(self) -> None:
        log = self.work.stack / "logs" / "sanic.log"
        poll(lambda: log.exists() and f"slow request {self.tag} started".encode() in log.read_bytes(), 60,
             f"the request {self.tag} in flight")

    def outcome(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the request {self.tag} never ended"
        return self.result if self.error is None else self.error


def spawned(main: int) -> list[int]:
    """Sanic's worker processes and its multiprocessing manager: the main process's spawn_main children."""
    return sorted(p.pid for p in all_procs() if p.ppid == main and "spawn_main" in p.argv)


def log_text(work: Work) -> str:
    try:
        return (work.stack / "logs" / "sanic.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def ready(daemon: Daemon, work: Work, since: int = 0) -> None:
    """Until qasup says ready, and then every worker said so. qasup's ready comes from the first worker's "Worker
    ready"; the test also waits for the other three, since Sanic 25's main process hangs for good on a SIGTERM
    that comes while it still waits for its workers' start-up acks (its [stop] timeout then SIGKILLs it)."""
    daemon.wait_ready("sanic")
    poll(lambda: log_text(work)[since:].count("Worker ready") >= 4, START_TIMEOUT, "all 4 workers ready")


# ------------------------------------------------------------------------------------------ graceful stop

def test_in_flight_requests_survive_stop_and_restart(work):
    daemon, port = sanic_stack(work)
    daemon.start()
    ready(daemon, work)
    s = daemon.service("sanic")
    main = s["pid"]
    assert len(spawned(main)) == 5, "4 workers and the multiprocessing manager"
    assert get(port, "/api/health") == {"status": "ok"}

    # stop: the request in flight completes, then nothing of Sanic is left and the port is free
    req = InFlight(work, port, "stop")
    req.started()
    daemon.ok("stop", "sanic")
    got = req.outcome()
    assert isinstance(got, dict) and (got["tag"], got["done"]) == ("stop", True), got
    work.nothing_left(exclude=daemon.own_pids, ports=[port], what="after qasup stop sanic")
    log = log_text(work)
    assert log.count("Worker complete") == 4, "Sanic's workers did not drain and stop:\n" + log

    # restart: the request in flight on the old instance completes; the new one serves; the old is gone
    since = len(log_text(work))
    daemon.ok("start", "sanic")
    ready(daemon, work, since)
    old = daemon.service("sanic")["pid"]
    old_procs = {p.ident for p in daemon.service_procs()}
    req = InFlight(work, port, "restart")
    req.started()
    since = len(log_text(work))
    daemon.ok("restart", "sanic")
    ready(daemon, work, since)
    got = req.outcome()
    assert isinstance(got, dict) and (got["tag"], got["done"]) == ("restart", True), got
    new = daemon.service("sanic")
    assert new["state"] == "ready" and new["pid"] != old
    assert get(port, "/pid")["ppid"] == new["pid"]
    still = old_procs & {p.ident for p in daemon.service_procs()}
    assert not still, f"processes of the instance before the restart still run: {still}"

    daemon.ok("shutdown", "--wait")
    assert daemon.wait() == 0, daemon.out
    work.nothing_left(ports=[port], what="after qasup shutdown")


def test_group_stop_mode_drops_the_in_flight_request(work):
    """Why the shipped unit stops Sanic with mode "main": SIGTERM to all of Sanic's processes at once kills its
    multiprocessing manager under the main process, which then breaks off its workers' drain."""
    daemon, port = sanic_stack(work, "20-group-stop.toml")
    daemon.start()
    ready(daemon, work)
    req = InFlight(work, port, "group")
    req.started()
    daemon.ok("stop", "sanic")
    got = req.outcome()
    assert isinstance(got, OSError), f"the request in flight survived a group stop: {got}"
    work.nothing_left(exclude=daemon.own_pids, ports=[port], what="after a group stop")
    assert daemon.terminate() == 0


# ------------------------------------------------------------------------------------------ SIGKILLs

def test_sigkill_of_a_worker_then_stop(work):
    daemon, port = sanic_stack(work)
    daemon.start()
    ready(daemon, work)
    main = daemon.service("sanic")["pid"]
    poll(lambda: len(spawned(main)) == 5, 30, "4 workers and the manager")
    victim = get(port, "/pid")["pid"]
    assert victim in spawned(main)
    os.kill(victim, signal.SIGKILL)
    poll(lambda: victim not in spawned(main), 30, "Sanic reaping its killed worker")

    # Sanic 25 does not replace it and says nothing; the three others serve on, the main process lives on,
    # so the service stays ready with the same main process and no restart
    served = {get(port, "/pid")["pid"] for _ in range(12)}
    assert victim not in served and served <= set(spawned(main))
    assert len(spawned(main)) == 4
    s = daemon.service("sanic")
    assert (s["state"], s["pid"], s["restarts"]) == ("ready", main, 0)

    daemon.ok("stop", "sanic")
    work.nothing_left(exclude=daemon.own_pids, ports=[port], what="after a worker was killed and qasup stop")
    assert daemon.terminate() == 0


@pytest.mark.parametrize("pid1", [False, True], ids=["child", "pid1"])
def test_sigkill_of_qasup_leaves_nothing(work, pid1):
    if pid1 and (problem := unshare_problem()):
        pytest.skip(problem)
    daemon, port = sanic_stack(work, pid1=pid1)
    daemon.start()
    ready(daemon, work)
    assert len(daemon.service_procs()) >= 6, [str(p) for p in daemon.service_procs()]
    req = InFlight(work, port, "kill")
    req.started()
    daemon.kill9()
    work.nothing_left(timeout=15, ports=[port], what="after SIGKILL of qasup")
    assert isinstance(req.outcome(), OSError)


# ------------------------------------------------------------------------------------------ patterns

def _unit(llm_api: str = "local") -> Any:
    """The shipped sanic unit as qasup reads it in a plan with that ``llm_api`` (the repository's own stack:
    qasup.toml, services.d/sanic.toml, and the conditional drop-ins of services.d/sanic.d/ whose [when] matches)."""
    from supervisor.config.conditional import unit_with
    from supervisor.config.loader import load_config
    from supervisor.errors import Problems
    from supervisor.plan.dropins import match_facts

    unit = load_config(cwd=REPO).units["sanic"]
    if unit.conditional is None:
        return unit
    applied = {f for f, when in unit.conditional.when.items() if match_facts(when, {"llm_api": llm_api})[0]}
    probs = Problems()
    merged = unit_with(unit, unit.conditional, applied, probs)
    assert not probs.items, probs.items
    return merged


def _hits(pattern: str, sample: str, engine: str) -> list[str]:
    """The lines of a sample the pattern matches, as qasup's scanner finds them in one chunk."""
    from supervisor.logs.scan import PatternSet

    data = (SAMPLES / sample).read_bytes()
    return [data[a:b].decode() for _, a, b in PatternSet([pattern], engine=engine).scan(data)]


TRACEBACK_HEADS = {   # sample -> the first line of each traceback in it
    "sanic25-run-startup-error.log": ["Traceback (most recent call last):"],
    "sanic25-run-missing-module.log": ["Traceback (most recent call last):"],
    "sanic25-run-port-taken.log": ["Traceback (most recent call last):"],
    "sanic25-cli-startup-error.log": ["╭ Srv"],
    "sanic25-cli-missing-module.log": ["╭ ⚠️  Uncaught ModuleNotFoundError"],
    "sanic25-cli-port-taken.log": [],
    "sanic25-run-start-stop.log": [],
}
PORT_TAKEN = {"sanic25-run-port-taken.log": "OSError: [Errno 98] Address already in use",
              "sanic25-cli-port-taken.log": "Startup failed: Address already in use"}


@pytest.mark.parametrize("engine", ["auto", "re2"])
@pytest.mark.parametrize("llm_api", SHIPPED)
def test_shipped_patterns_match_real_sanic25_output(llm_api, engine):
    unit = _unit(llm_api)
    rules = {r.action: r for r in unit.on_log}
    traceback = next(r for r in unit.on_log if "Traceback" in r.match)
    port = rules["abort"]
    for sample, heads in TRACEBACK_HEADS.items():
        got = _hits(traceback.match, sample, engine)
        assert len(got) == len(heads), (sample, got)
        assert all(g.startswith(h) for g, h in zip(got, heads)), (sample, got)
        want = [PORT_TAKEN[sample]] if sample in PORT_TAKEN else []
        assert [w in g for g, w in zip(_hits(port.match, sample, engine), want)] == [True] * len(want), sample
        assert len(_hits(port.match, sample, engine)) == len(want), sample
        for rule in unit.on_log:   # the database rule never fires on start-up output that is not about them
            if rule.action == "restart":
                assert _hits(rule.match, sample, engine) == [], sample

    # ready: Sanic 25's "Worker ready" (once per worker), never its early "Starting worker", never on a failed start
    ready = unit.ready.log
    assert [h.split("INFO: ")[1][:12] for h in _hits(ready, "sanic25-run-start-stop.log", engine)] == \
        ["Worker ready"] * 4
    for sample in ("sanic25-run-startup-error.log", "sanic25-cli-startup-error.log"):
        assert "Starting worker" in (SAMPLES / sample).read_text() and _hits(ready, sample, engine) == []
    # Sanic 23 (QAnything's pin) logs "Starting worker" as its worker starts serving, in its own format
    # ("%(asctime)s [%(process)s] [%(levelname)s] %(message)s", asctime "[%Y-%m-%d %H:%M:%S %z]")
    from supervisor.config.patterns import compile_line_pattern

    assert compile_line_pattern(ready).search(b"[2024-05-06 10:11:12 +0800] [812] [INFO] Starting worker [812]")


def test_both_shipped_sanic_units_agree():
    """sanic in a local-LLM plan and in the cloud plan (sanic.d/cloud.toml applied) run the same server: the same
    readiness, stop and error rules; only the mode and what it requires differ."""
    local, cloud = (_unit(n) for n in SHIPPED)
    assert (local.command[-2:], cloud.command[-2:]) == (("--mode", "local"), ("--mode", "online"))
    assert set(local.requires) - set(cloud.requires) == {"llm", "llm-api"}
    assert (local.ready, local.stop, local.on_log) == (cloud.ready, cloud.stop, cloud.on_log)
    assert local.stop.mode == "main" and local.stop.signal in ("SIGTERM", 15)


@pytest.mark.parametrize("case", ["run-connect", "cli-connect"])
def test_real_start_up_traceback_fires_the_shipped_rule(work, case):
    dropins = ["30-no-restart.toml"] + (["20-cli.toml"] if case.startswith("cli") else [])
    if case.startswith("cli"):
        need(str(Path(PY).with_name("sanic")))
    daemon, port = sanic_stack(work, *sorted(dropins))
    daemon.env["IT_SANIC_FAIL"] = "connect"
    daemon.start()
    poll(lambda: "failed" in daemon.states("sanic"), START_TIMEOUT, lambda: "sanic failed\n" + daemon.out)
    out = daemon.out
    assert "sanic: error rule" in out and "printed a Python traceback" in out, out
    head = "╭ Srv" if case.startswith("cli") else "Traceback (most recent call last):"
    assert f"> {head}" in out, out
    assert "ready" not in daemon.states("sanic"), "a failed start was reported ready (an early ready marker)"
    work.nothing_left(exclude=daemon.own_pids, ports=[port], what="after the failed start")
    assert daemon.terminate() == 0


def test_real_port_taken_aborts_with_the_shipped_rule(work):
    daemon, port = sanic_stack(work)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        daemon.start()
        code = daemon.wait(START_TIMEOUT)
    assert code == 1, daemon.out
    assert "port 8777 (QAnything API) is taken by another process" in daemon.out
    work.nothing_left(what="after the abort")
