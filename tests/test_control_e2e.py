"""Every control verb against a real running daemon, through the CLI as a subprocess (the user's view)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.control import client

from enginehelp import all_ready, api_status, free_port, together, together_alone, together_results  # noqa: F401  (fixtures)

PY = sys.executable


def write_units(root: Path, units: dict[str, str], stack: str | None = None) -> None:
    (root / "services.d").mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (root / "services.d" / f"{name}.toml").write_text(textwrap.dedent(text))
    if stack is not None:
        (root / "qasup.toml").write_text(textwrap.dedent(stack))


def cli(root: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1"})


def poll(predicate, timeout: float = 15.0, what: str | Callable[[], str] = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


class Daemon:
    def __init__(self, root: Path, *extra: str) -> None:
        self.root = root
        self.out = open(root / "up.out", "wb")
        self.proc = subprocess.Popen([PY, "-m", "supervisor", "up", *extra], cwd=root, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def status(self) -> dict:
        """The status document, read in this process (``status --json`` prints it; a CLI start per poll would
        compete for the CPU with what the poll waits for). The CLI's own output is asserted where it is tested."""
        return api_status(self.root / ".qasup" / "qasup.sock", self.output)

    def service(self, name: str) -> dict:
        for s in self.status().get("services", []):
            if s["name"] == name:
                return s
        return {}

    def wait_state(self, name: str, state: str, timeout: float = 15.0) -> dict:
        return poll(lambda: (s := self.service(name)).get("state") == state and s, timeout,
                    f"{name} to be {state}")

    def output(self) -> str:
        return (self.root / "up.out").read_text(errors="replace")

    def close(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.out.close()
        return self.proc.returncode


MARK = "qasup-e2e-marker"

UNITS = {
    "db": f"""
        command = ["sh", "-c", "echo db starting; sleep 0.2; echo db ready {MARK}; exec sleep 300"]
        [ready]
        log = "db ready"
        [restart]
        delay = "50ms"
        """,
    "api": f"""
        command = ["sh", "-c", "echo api up {MARK}; exec sleep 300"]
        requires = ["db"]
        [restart]
        delay = "50ms"
        """,
    "web": f"""
        command = ["sh", "-c", "echo web up {MARK} $$API_KEY; exec sleep 300"]
        env = {{ API_KEY = "s3cret-value" }}
        after = ["api"]
        [restart]
        delay = "50ms"
        """,
}


STACK = '[stack]\nname = "e2e"\nstop_budget = "10s"\n'


def marked(keep: set[int]) -> list[int]:
    """Processes with MARK in their command line, but ``keep``."""
    found = subprocess.run(["pgrep", "-f", MARK], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) not in keep]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    """One daemon for the tests that take :func:`daemon` (each acts on its three services; ``daemon`` puts back
    what the test before changed): one start and one shutdown for all of them, not one per test."""
    root = tmp_path_factory.mktemp("e2e")
    write_units(root, UNITS, STACK)
    d = Daemon(root)
    try:
        poll(lambda: all_ready(d.status()), 20, "stack ready")
        yield d
    finally:
        d.close()
        leftovers = marked(set())
        kill_all(leftovers)
        assert not leftovers, f"processes left behind: {leftovers}"


def _put_back(d: Daemon) -> None:
    """The units as written, every service started, the stack ready: what a fresh ``qasup up`` of UNITS gives."""
    assert d.proc.poll() is None, f"the daemon exited ({d.proc.returncode}); output:\n{d.output()}"
    sock = d.root / ".qasup" / "qasup.sock"
    changed = False
    for unit in (d.root / "services.d").glob("*.toml"):
        if unit.stem not in UNITS:
            unit.unlink()
            changed = True
    for name, text in UNITS.items():
        unit = d.root / "services.d" / f"{name}.toml"
        if unit.read_text() != textwrap.dedent(text):
            unit.write_text(textwrap.dedent(text))
            changed = True
    if changed:
        code, answer = client.request(sock, "POST", "/v1/reload", timeout=None)
        assert 200 <= code < 300, (code, answer)
    for s in d.status()["services"]:
        if s["state"] == "stopped":
            code, answer = client.request(sock, "POST", f"/v1/services/{s['name']}/start", timeout=None)
            assert 200 <= code < 300, (code, answer)
    poll(lambda: all_ready(st := d.status()) and st["stack"]["state"] == "ready", 20,
         lambda: f"the stack ready again; output:\n{d.output()}")


@pytest.fixture
def daemon(shared_daemon):
    """The shared daemon, as a fresh one would be; at the end, nothing the test started may be left (the
    services' current processes aside)."""
    _put_back(shared_daemon)
    yield shared_daemon
    current = {s["pid"] for s in shared_daemon.status()["services"] if s["pid"]}
    deadline = time.monotonic() + 3
    while (leftovers := marked(current)) and time.monotonic() < deadline:
        time.sleep(0.05)   # a just-stopped instance may still be vanishing
    kill_all(leftovers)
    assert not leftovers, f"processes left behind: {leftovers}"


def test_status_table_and_json(daemon):
    r = cli(daemon.root, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "ready" in lines[0]
    for name in ("db", "api", "web"):
        assert any(line.split()[0] == name and "ready" in line for line in lines[1:]), r.stdout
    st = json.loads(cli(daemon.root, "status", "--json").stdout)
    assert st["stack"]["state"] == "ready"
    by = {s["name"]: s for s in st["services"]}
    assert set(by) == {"db", "api", "web"}
    for s in by.values():
        assert s["state"] == "ready" and isinstance(s["pid"], int) and s["restarts"] == 0
        assert set(s) >= {"name", "state", "pid", "restarts", "uptime_s", "ready_after_s", "exit_code",
                          "last_error", "gpu"}
    assert by["db"]["ready_after_s"] >= 0.2
    one = json.loads(cli(daemon.root, "status", "db", "--json").stdout)
    assert [s["name"] for s in one["services"]] == ["db"]


def test_stop_keeps_stopped_and_start_brings_dependents_back(daemon):
    r = cli(daemon.root, "stop", "db")
    assert r.returncode == 0, r.stderr
    assert daemon.service("db")["state"] == "stopped"
    daemon.wait_state("api", "waiting")          # requires db: stopped with it, waits
    assert cli(daemon.root, "status").returncode == 3
    # nothing brings db back by itself, even when a dependent restarts
    cli(daemon.root, "restart", "web")
    time.sleep(0.3)  # a negative check: give a wrong restart the chance to happen
    assert daemon.service("db")["state"] == "stopped"
    r = cli(daemon.root, "start", "db")
    assert r.returncode == 0, r.stderr
    daemon.wait_state("db", "ready")
    daemon.wait_state("api", "ready")


def test_restart_gives_new_pid_and_with_dependents(daemon):
    before = {s["name"]: s["pid"] for s in daemon.status()["services"]}
    r = cli(daemon.root, "restart", "db")
    assert r.returncode == 0, r.stderr
    after = {s["name"]: s["pid"] for s in daemon.status()["services"]}
    assert after["db"] != before["db"]
    assert after["api"] == before["api"]          # a plain restart leaves dependents alone
    r = cli(daemon.root, "restart", "db", "--with-dependents")
    assert r.returncode == 0, r.stderr
    again = {s["name"]: s["pid"] for s in daemon.status()["services"]}
    assert again["db"] != after["db"] and again["api"] != after["api"]


def test_unknown_service_and_usage_errors(daemon):
    for verb in ("start", "stop", "restart"):
        r = cli(daemon.root, verb, "nope")
        assert r.returncode == 1 and "nope" in (r.stderr + r.stdout)
    r = cli(daemon.root, "logs", "nope")
    assert r.returncode == 1
    r = cli(daemon.root, "status", "nope")
    assert r.returncode != 0


def test_logs_tail_and_follow(daemon):
    r = cli(daemon.root, "logs", "db", "-n", "1")
    assert r.returncode == 0
    assert r.stdout.strip().endswith(MARK)
    assert "db starting" not in r.stdout
    f = subprocess.Popen([PY, "-m", "supervisor", "logs", "db", "-n", "0", "-f"], cwd=daemon.root,
                         stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # let the follower attach before the restart writes new lines
        assert cli(daemon.root, "restart", "db").returncode == 0
        line = poll(lambda: f.stdout.readline(), 10, "followed line")
        assert "db starting" in line or "db ready" in line
    finally:
        f.kill()
        f.wait()


def test_wait_ready(daemon):
    assert cli(daemon.root, "wait-ready", "--timeout", "5s").returncode == 0
    assert cli(daemon.root, "wait-ready", "db", "api", "--timeout", "0").returncode == 0
    cli(daemon.root, "stop", "db")
    r = cli(daemon.root, "wait-ready", "db", "--timeout", "300ms")
    assert r.returncode == 1


def test_events_stream(daemon):
    ev = subprocess.Popen([PY, "-m", "supervisor", "events"], cwd=daemon.root, stdout=subprocess.PIPE,
                          text=True)
    try:
        time.sleep(0.3)
        assert cli(daemon.root, "restart", "web").returncode == 0
        states = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "ready" not in states:
            line = ev.stdout.readline()
            obj = json.loads(line)
            if obj.get("service") == "web":
                states.append(obj["state"])
        assert states[:1] == ["stopping"] and "ready" in states, states
    finally:
        ev.kill()
        ev.wait()


def test_reload_restarts_only_changed(daemon):
    before = {s["name"]: s["pid"] for s in daemon.status()["services"]}
    web = daemon.root / "services.d" / "web.toml"
    web.write_text(web.read_text().replace("web up", "web UP"))
    r = cli(daemon.root, "reload")
    assert r.returncode == 0, r.stderr
    daemon.wait_state("web", "ready")
    poll(lambda: daemon.service("web")["pid"] != before["web"], 10, "web restarted")
    after = {s["name"]: s["pid"] for s in daemon.status()["services"]}
    assert after["db"] == before["db"] and after["api"] == before["api"]
    # an invalid configuration is refused and the running one stays
    (daemon.root / "services.d" / "bad.toml").write_text("command = 5\n")
    r = cli(daemon.root, "reload")
    assert r.returncode == 2
    assert "bad.toml" in r.stderr + r.stdout
    assert {s["name"]: s["pid"] for s in daemon.status()["services"]} == after


@together
def test_secrets_masked_in_plan(tmp_path):
    write_units(tmp_path, {"a": 'command = ["true"]\nenv = { API_KEY = "hunter2-secret" }\n'},
                '[plan]\nllm_api = "cloud"\ngpus = [{index = 0, name = "RTX 4090", memory_total_mib = 24564}]\n')
    r = cli(tmp_path, "plan", "--json")
    assert "hunter2" not in r.stdout


@together
def test_shutdown_verb_and_no_daemon(tmp_path):
    write_units(tmp_path, {"a": f'command = ["sh", "-c", "echo {MARK}; exec sleep 300"]\n'})
    d = Daemon(tmp_path)
    try:
        poll(lambda: all_ready(api_status(tmp_path / ".qasup" / "qasup.sock")), 20, "ready")
        assert cli(tmp_path, "shutdown").returncode == 0
        assert d.proc.wait(15) == 0
    finally:
        d.close()
    r = cli(tmp_path, "status")
    assert r.returncode == 4
    assert "qasup.sock" in r.stderr
    for verb in (["start", "a"], ["stop", "a"], ["restart", "a"]):
        assert cli(tmp_path, *verb).returncode == 4


@together
def test_tcp_listener_needs_a_long_token(tmp_path):
    import urllib.error
    import urllib.request

    write_units(tmp_path, {"a": f'command = ["sh", "-c", "echo {MARK}; exec sleep 300"]\n'})
    port = free_port()
    short = subprocess.run([PY, "-m", "supervisor", "up", "--listen", f"127.0.0.1:{port}"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=30, env={**os.environ, "QASUP_TOKEN": "short"})
    assert short.returncode == 2 and "QASUP_TOKEN" in short.stderr
    token = "t" * 24
    env = {**os.environ, "QASUP_TOKEN": token}
    proc = subprocess.Popen([PY, "-m", "supervisor", "up", "--listen", f"127.0.0.1:{port}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        poll(lambda: all_ready(api_status(tmp_path / ".qasup" / "qasup.sock")), 20, "ready")
        url = f"http://127.0.0.1:{port}/v1/status"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=5)
        assert denied.value.code == 401
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read())["services"][0]["name"] == "a"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


@together
def test_reload_restarts_a_service_whose_env_file_changed(tmp_path):
    write_units(tmp_path, {
        "reader": f'command = ["sh", "-c", "echo $$GREETING {MARK}; exec sleep 300"]\nenv_files = ["app.env"]\n',
        "other": f'command = ["sh", "-c", "echo other {MARK}; exec sleep 300"]\n',
    })
    (tmp_path / "app.env").write_text("GREETING=hello\n")
    d = Daemon(tmp_path)
    try:
        poll(lambda: all_ready(api_status(tmp_path / ".qasup" / "qasup.sock")), 20, "ready")
        before = {s["name"]: s["pid"] for s in d.status()["services"]}
        r = cli(tmp_path, "reload")
        assert r.returncode == 0 and {s["name"]: s["pid"] for s in d.status()["services"]} == before
        (tmp_path / "app.env").write_text("GREETING=bonjour\n")
        r = cli(tmp_path, "reload")
        assert r.returncode == 0, r.stderr
        poll(lambda: d.service("reader").get("pid") not in (None, before["reader"])
             and d.service("reader")["state"] == "ready", 10, "reader restarted")
        assert d.service("other")["pid"] == before["other"]
        poll(lambda: b"bonjour" in (tmp_path / "logs" / "reader.log").read_bytes(), 5, "new value used")
    finally:
        assert d.close() == 0


def spawned(root: Path, name: str) -> list[int]:
    """The pids the service was spawned with, in order, from events.jsonl."""
    events = [json.loads(line) for line in (root / ".qasup" / "events.jsonl").read_text().splitlines()
              if line.endswith("}")]
    return [e["pid"] for e in events if e.get("service") == name and e.get("state") == "starting" and "pid" in e]


@together
def test_a_stop_during_a_restart_answers_both_requests(tmp_path):
    """`restart base` while base is starting, then `stop base`: the restart is answered at once (refused:
    the service ended stopped), not after its readiness time-out."""
    write_units(tmp_path, {"base": f"""
        command = ["sh", "-c", "echo base {MARK}; exec sleep 300"]
        [ready]
        log = "never printed"
        timeout = "60s"
        """}, '[stack]\nname = "e2e"\nstop_budget = "10s"\n')
    d = Daemon(tmp_path)
    try:
        d.wait_state("base", "starting", 20)
        t0 = time.monotonic()
        restart = subprocess.Popen([PY, "-m", "supervisor", "restart", "base"], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the restart's new run: a second instance spawned (each spawn is a "starting" event with its pid)
        poll(lambda: d.service("base").get("restarts") == 0 and len(spawned(tmp_path, "base")) >= 2, 15,
             "the restart's new run")
        stop = cli(tmp_path, "stop", "base")
        assert stop.returncode == 0, stop.stderr
        out, err = restart.communicate(timeout=15)
        assert restart.returncode == 1 and "base: stopped" in err, (out, err)
        assert time.monotonic() - t0 < 15, "the restart waited for its readiness time-out"
    finally:
        restart.kill() if "restart" in locals() and restart.poll() is None else None
        d.close()


@together
def test_a_restart_during_a_stop_answers_the_stop_at_once(tmp_path):
    """`stop base` while base's first run ignores SIGTERM (its stop lasts until the SIGKILL at `[stop] timeout`), then
    `restart base`: the stop is answered at once (refused: overtaken, the service will run again), not when the
    old run finally ends, nor after the stop verb's own time-out; the restart is answered once the new run is up."""
    script = (f"if [ -e ran ]; then echo again {MARK}; exec sleep 300; fi; "
              f"touch ran; trap '' TERM; echo base {MARK}; exec sleep 300")
    write_units(tmp_path, {"base": f"""
        command = ["sh", "-c", {json.dumps(script)}]
        [stop]
        timeout = "6s"
        """}, '[stack]\nname = "e2e"\nstop_budget = "10s"\n')
    d = Daemon(tmp_path)
    stop = restart = None
    try:
        first = d.wait_state("base", "ready", 20)["pid"]
        stop = subprocess.Popen([PY, "-m", "supervisor", "stop", "base"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        d.wait_state("base", "stopping", 15)
        t0 = time.monotonic()
        restart = subprocess.Popen([PY, "-m", "supervisor", "restart", "base"], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = stop.communicate(timeout=15)
        took = time.monotonic() - t0
        assert stop.returncode == 1 and "stop overtaken by a later start or restart" in err, (out, err)
        assert took < 4, f"the stop was answered after {took:.1f} s: it waited for the old run's SIGKILL"
        assert d.service("base")["state"] == "stopping", "the old run ignores SIGTERM: it is still stopping"
        out, err = restart.communicate(timeout=30)
        assert restart.returncode == 0, (out, err)
        now = d.service("base")
        assert now["state"] == "ready" and now["pid"] not in (None, first), now
    finally:
        for p in (stop, restart):
            if p is not None and p.poll() is None:
                p.kill()
        assert d.close() == 0
