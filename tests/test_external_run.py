"""External services at run time (issue 15): a unit with ``external = true`` runs elsewhere and is known only
through its ``[ready]``/``[live]`` probes. Real ``qasup up`` runs, real sockets: the "remote" service is a tiny
HTTP server in this test process, stopped and started again on the same port to make it go and come back.

The rules tested here are those of :mod:`supervisor.engine.external` (its docstring is the reference)."""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from supervisor.cli.render import render_status
from supervisor.control import client
from supervisor.control.metrics import Observed, render_metrics
from supervisor.protocol import service_status

from conftest import qasup
from enginehelp import free_port, poll, stack, together, together_alone, together_results, up  # noqa: F401  (fixtures)

SLEEP = ["sh", "-c", "exec sleep 100"]
FAST = {"interval": "50ms"}


class Remote:
    """An HTTP server on a fixed port that answers 200 to GET /; ``start()``/``stop()`` make it come and go.

    The port stays bound for the Remote's whole life, by a socket that never listens (SO_REUSEPORT lets each
    start's listener join it): while the server is away a connection is refused, as from a machine that is down,
    and no other socket can take the port in between (CI saw ``Address already in use`` at a start)."""

    def __init__(self) -> None:
        self.reserve = socket.socket()
        self.reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.reserve.bind(("127.0.0.1", 0))
        self.port = self.reserve.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> Remote:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_port = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def close(self) -> None:
        self.stop()
        self.reserve.close()


def external_unit(stack, name: str, remote: Remote, live: dict | None = None, **ready: object) -> None:
    doc: dict = {"external": True, "ready": {"http": remote.url, "timeout": "20s", **FAST, **ready}}
    if live is not None:
        doc["live"] = {"http": remote.url, "interval": "100ms", "timeout": "300ms", "failures": 2, **live}
    stack.unit(name, **doc)


def rows(u) -> dict[str, dict]:
    """Every service's status row, by name, read in-process from the control socket (no CLI start per read)."""
    def answer() -> tuple[int, dict] | None:
        try:
            return client.request(u.root / ".qasup" / "qasup.sock", "GET", "/v1/status", timeout=10)
        except client.NoDaemon:   # not listening yet
            return None
    code, doc = poll(answer, 10, lambda: f"the control socket; output:\n{u.out}")
    assert code == 200, (code, doc)
    return {r["name"]: r for r in doc["services"]}


def srow(u, name: str) -> dict:
    return rows(u)[name]


def index(evs: list[dict], name: str, state: str, nth: int = 1) -> int:
    found = [i for i, e in enumerate(evs) if e.get("service") == name and e["state"] == state
             and e.get("prev") != state]
    return found[nth - 1]


# ------------------------------------------------------------------------------------------ start


@together
def test_external_is_ready_when_its_server_appears_and_only_then_what_requires_it_starts(stack, up, tmp_path):
    remote = Remote()
    external_unit(stack, "ctl", remote)
    stack.unit("web", command=SLEEP, requires=["ctl"])
    u = up().start()
    u.wait_state("ctl", "starting")
    row = poll(lambda: (r := srow(u, "ctl"))["waiting_on"] and r, 10, "ctl's waiting_on")
    assert row["external"] is True and row["pid"] is None and row["state"] == "starting", row
    assert f"GET {remote.url}" in row["waiting_on"], row        # it names the probe it waits on
    web = srow(u, "web")
    assert web["external"] is False and web["state"] == "waiting" and web["waiting_on"] == "waiting for ctl (starting)"
    table = qasup("status", cwd=tmp_path, env={"COLUMNS": "300"})
    ctl_line = next(line for line in table.stdout.splitlines() if line.startswith("ctl "))
    assert re.match(r"ctl\s+starting\s+external\s", ctl_line), table.stdout
    assert not u.states("web") or set(u.states("web")) == {"waiting"}
    remote.start()
    try:
        u.wait_state("web", "ready", timeout=10)
        evs = u.events()
        assert index(evs, "ctl", "ready") < index(evs, "web", "starting")
        ctl_evs = [e for e in evs if e.get("service") == "ctl"]
        assert [e["state"] for e in ctl_evs][:2] == ["starting", "ready"]
        assert ctl_evs[0]["message"] == f"external: probing http {remote.url}"
        assert all("pid" not in e for e in ctl_evs)
        row = srow(u, "ctl")
        assert row["state"] == "ready" and row["pid"] is None and row["waiting_on"] is None
        assert row["ready_after_s"] is not None and row["uptime_s"] is not None
        assert u.stop() == 0
    finally:
        remote.close()


@together
def test_ready_timeout_is_said_once_and_the_probing_goes_on(stack, up, tmp_path):
    flag = tmp_path / "remote-is-up"
    stack.unit("ctl", external=True, ready={"exec": ["test", "-e", str(flag)], "timeout": "300ms", **FAST})
    stack.unit("web", command=SLEEP, requires=["ctl"])
    u = up().start()
    u.wait_out("ctl: not ready within 0.3s: test -e ")
    row = poll(lambda: "exited 1" in (r := srow(u, "ctl"))["waiting_on"] and r, 10, "the probe's own words")
    assert row["state"] == "starting" and row["last_error"] == "not ready within 0.3s (external: still probing)"
    assert f"test -e {flag} exited 1" in row["waiting_on"], row
    assert srow(u, "web")["state"] == "waiting"
    flag.touch()
    u.wait_state("web", "ready", timeout=10)
    assert srow(u, "ctl")["last_error"] is None
    assert u.out.count("not ready within") == 1
    timeouts = [e for e in u.events() if e.get("service") == "ctl" and "not ready within" in e.get("message", "")]
    assert len(timeouts) == 1 and timeouts[0]["state"] == "starting"
    assert u.stop() == 0


# ------------------------------------------------------------------------------------------ [live]


@together
def test_live_failure_sends_it_back_to_starting_and_restart_with_dependents_follow_it(stack, up, tmp_path):
    remote = Remote().start()
    try:
        external_unit(stack, "ctl", remote, live={})
        stack.unit("worker", command=SLEEP, requires=["ctl"], restart_with=["ctl"])
        stack.unit("bystander", command=SLEEP, requires=["ctl"])
        u = up().start()
        u.wait_state("worker", "ready", timeout=10)
        u.wait_state("bystander", "ready", timeout=10)
        before = {n: r["pid"] for n, r in rows(u).items() if n != "ctl"}
        remote.stop()
        u.wait_state("ctl", "starting", nth=2, timeout=10)
        row = srow(u, "ctl")
        assert row["state"] == "starting" and row["restarts"] == 1 and row["counters"]["live_failures"] == 1
        assert row["last_error"].startswith("liveness: 2 failed checks in a row: "), row
        code, doc = u.status()
        assert doc["stack"]["state"] == "degraded" and code == 3
        # the engine's rule for a required dependency that restarts: what runs keeps running meanwhile
        assert {n: r["pid"] for n, r in rows(u).items() if n != "ctl"} == before
        u.wait_out(": probing again")   # qasup's stdout is written by a thread: not ordered with events
        assert "ctl: liveness: 2 failed checks in a row: " in u.out and ": probing again" in u.out
        remote.start()
        u.wait_state("worker", "ready", nth=2, timeout=10)
        evs = u.events()
        ctl = [e["state"] for e in evs if e.get("service") == "ctl" and e.get("prev") != e["state"]]
        assert ctl == ["starting", "ready", "starting", "ready"]   # straight back to starting: no stop, no back-off
        assert index(evs, "ctl", "ready", 2) < index(evs, "worker", "stopping") < index(evs, "worker", "ready", 2)
        after = {n: r["pid"] for n, r in rows(u).items() if n != "ctl"}
        assert after["worker"] != before["worker"] and after["bystander"] == before["bystander"]
        assert srow(u, "ctl")["last_error"] is None
        assert client.request(u.root / ".qasup" / "qasup.sock", "GET", "/v1/status")[1]["stack"]["state"] == "ready"
        assert u.stop() == 0
    finally:
        remote.close()


@together
def test_live_action_fail_fails_it_and_what_requires_it_until_the_server_is_back(stack, up, tmp_path):
    remote = Remote().start()
    try:
        external_unit(stack, "ctl", remote, live={"action": "fail"})
        stack.unit("web", command=SLEEP, requires=["ctl"])
        u = up().start()
        u.wait_state("web", "ready", timeout=10)
        first = srow(u, "web")["pid"]
        remote.stop()
        u.wait_state("web", "failed", timeout=10)
        ctl, web = srow(u, "ctl"), srow(u, "web")
        assert ctl["state"] == "failed" and ctl["last_error"].startswith("liveness: 2 failed checks in a row")
        assert web["state"] == "failed" and web["pid"] is None and web["last_error"].startswith("requires ctl, which failed")
        remote.start()
        u.wait_state("web", "ready", nth=2, timeout=10)
        assert srow(u, "ctl")["state"] == "ready" and srow(u, "web")["pid"] != first
        assert u.stop() == 0
    finally:
        remote.close()


# ------------------------------------------------------------------------------------------ verbs


@together
def test_stop_start_restart_and_logs_of_an_external_service(stack, up, tmp_path):
    remote = Remote().start()
    try:
        external_unit(stack, "ctl", remote)
        stack.unit("web", command=SLEEP, requires=["ctl"])
        u = up().start()
        u.wait_state("web", "ready", timeout=10)
        r = qasup("stop", "ctl", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert srow(u, "ctl")["state"] == "stopped"
        assert [e["message"] for e in u.events() if e.get("service") == "ctl"][-1] == "probing stopped"
        u.wait_state("web", "waiting", timeout=10)    # dep-wait: what requires it stops and waits
        assert srow(u, "web")["pid"] is None
        r = qasup("start", "ctl", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        u.wait_state("web", "ready", nth=2, timeout=10)
        web_pid = srow(u, "web")["pid"]
        r = qasup("restart", "ctl", "--with-dependents", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert srow(u, "ctl")["state"] == "ready"
        assert len([e for e in u.events() if e.get("service") == "ctl" and e["state"] == "ready"]) == 3
        assert srow(u, "web")["pid"] not in (None, web_pid)
        r = qasup("logs", "ctl", cwd=tmp_path)
        assert r.returncode == 1 and "ctl is external" in r.stderr and "no log file" in r.stderr, r
        status, payload = client.request(tmp_path / ".qasup" / "qasup.sock", "GET", "/v1/services/ctl/logs?n=5")
        assert status == 409 and "external" in payload["error"], (status, payload)
        status, _ = client.request(tmp_path / ".qasup" / "qasup.sock", "GET", "/v1/services/ctl/logs?follow=1")
        assert status == 409
        assert not (tmp_path / "logs" / "ctl.log").exists()
        assert u.stop() == 0
    finally:
        remote.close()


# ------------------------------------------------------------------------------------------ shutdown


@together
def test_shutdown_while_it_probes_exits_0_at_once(stack, up, tmp_path):
    remote = Remote()   # never started: the probing goes on until the shutdown
    external_unit(stack, "ctl", remote, timeout="300ms")
    stack.unit("web", command=SLEEP, requires=["ctl"])
    stack.unit("other", command=SLEEP)
    u = up().start()
    u.wait_state("other", "ready", timeout=10)
    u.wait_state("ctl", "starting")
    began = time.monotonic()
    assert u.stop() == 0
    assert time.monotonic() - began < 3
    ctl = [e for e in u.events() if e.get("service") == "ctl"]
    assert ctl[-1]["state"] == "stopped" and ctl[-1]["message"] == "probing stopped"
    assert "stop budget" not in u.out and "stack stopped cleanly; exit 0" in u.out
    remote.close()


@together
def test_shutdown_with_an_external_ready_and_a_dependent_running(stack, up, tmp_path):
    remote = Remote().start()
    try:
        external_unit(stack, "ctl", remote, live={})
        stack.unit("web", command=SLEEP, requires=["ctl"])
        stack.stack(stop_budget="20s")
        u = up().start()
        u.wait_state("web", "ready", timeout=10)
        began = time.monotonic()
        assert u.stop() == 0
        assert time.monotonic() - began < 3
        assert u.states("ctl")[-1] == "stopped" and u.states("web")[-1] == "stopped"
    finally:
        remote.close()


# ------------------------------------------------------------------------------------------ reload


@together
def test_reload_makes_a_local_unit_external_and_back(stack, up, tmp_path):
    remote = Remote().start()
    try:
        stack.unit("ctl", command=SLEEP)
        u = up().start()
        u.wait_state("ctl", "ready", timeout=10)
        pid = srow(u, "ctl")["pid"]
        external_unit(stack, "ctl", remote)
        r = qasup("reload", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        row = poll(lambda: (s := srow(u, "ctl"))["external"] and s["state"] == "ready" and s, 10,
                   lambda: f"ctl external and ready; output:\n{u.out}")
        assert row["pid"] is None
        poll(lambda: pid not in u.leftovers(), 5, "the local process of ctl to be gone")
        stack.unit("ctl", command=SLEEP)
        r = qasup("reload", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        row = poll(lambda: (s := srow(u, "ctl"))["pid"] and s, 10, lambda: f"ctl local again:\n{u.out}")
        assert row["external"] is False and row["pid"] != pid
        assert u.stop() == 0
    finally:
        remote.close()


# ------------------------------------------------------------------------------------------ /metrics, table


@together
def test_metrics_and_the_status_page_show_it_external(stack, up, tmp_path):
    remote = Remote().start()
    try:
        external_unit(stack, "ctl", remote)
        stack.unit("web", command=SLEEP, requires=["ctl"])
        u = up().start("--http", "127.0.0.1:0")
        u.wait_state("web", "ready", timeout=10)
        port = int(poll(lambda: re.search(r"status page and /metrics on http://127\.0\.0\.1:(\d+)/", u.out), 10,
                        "the --http line").group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'qasup_service_external{service="ctl"} 1' in text and 'qasup_service_external{service="web"} 0' in text
        assert 'qasup_service_up{service="ctl"} 1' in text
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/services/ctl/logs", timeout=10)
            raise AssertionError("the logs of an external service were served")
        except urllib.error.HTTPError as e:
            assert e.code == 409
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert 's.external ? "external"' in r.read().decode()
        assert u.stop() == 0
    finally:
        remote.close()


def test_the_table_and_metrics_render_external_rows():
    rows = [service_status(name="ctl", state="ready", external=True),
            service_status(name="web", state="ready", pid=812)]
    payload = {"stack": {"state": "ready", "pid": 1, "uptime_s": 3.0, "name": "s", "time": 100.0}, "services": rows}
    lines = render_status(payload).splitlines()   # type: ignore[arg-type]
    assert re.match(r"ctl\s+ready\s+external\s", lines[2]) and re.match(r"web\s+ready\s+812\s", lines[3]), lines

    text = render_metrics(payload, Observed(), process={"cpu": 0.0, "rss": 1.0})   # type: ignore[arg-type]
    assert "# TYPE qasup_service_external gauge" in text
    assert 'qasup_service_external{service="ctl"} 1\n' in text and 'qasup_service_external{service="web"} 0\n' in text


# ------------------------------------------------------------------------------------------ up --only


@together
def test_a_unit_outside_only_is_probed_over_tcp_and_never_started(stack, up, tmp_path):
    port = free_port()
    stack.unit("ctl", command=["sh", "-c", "exec sleep 101"], ready={"tcp": f"127.0.0.1:{port}", **FAST})
    stack.unit("web", command=SLEEP, requires=["ctl"])
    u = up().start("--only", "web")
    u.wait_state("ctl", "starting")
    assert "tcp 127.0.0.1:" in poll(lambda: srow(u, "ctl")["waiting_on"], 10, "ctl's waiting_on")
    listener = socket.create_server(("127.0.0.1", port))   # the remote comes: its port answers
    try:
        u.wait_state("web", "ready", timeout=10)
        ctl = srow(u, "ctl")
        assert ctl["external"] is True and ctl["pid"] is None and ctl["state"] == "ready"
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in u.leftovers()]
        # ctl never ran: neither its shell nor the sleep it execs, matched whole (the guardian's arguments carry a
        # random daemon id and pids, in which "101" can appear)
        assert b"sleep\x00100\x00" in commands, commands
        assert b"sleep\x00101\x00" not in commands and b"sh\x00-c\x00exec sleep 101\x00" not in commands, commands
        assert u.stop() == 0
    finally:
        listener.close()
