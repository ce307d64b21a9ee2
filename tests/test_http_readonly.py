"""The read-only HTTP listener (``serve(http=...)``, ``qasup up --http``, ``[stack] http``): what it serves
without a token, that nothing it is sent changes anything, and that it keeps the control API's limits.

In-process tests run ``serve()`` on a background event loop with the in-memory controller of fakecontrol.py
(real Unix and TCP sockets); the end-to-end ones run ``qasup up`` with real services.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.from_thread
import pytest

from supervisor.control import client
from supervisor.control.http import Limits
from supervisor.control.metrics import Observed
from supervisor.control.server import ServeInfo, serve

from conftest import make_stack, qasup
from enginehelp import PY, free_port, poll, stack, together, together_alone, together_results, up  # noqa: F401  (stack, up: fixtures)
from fakecontrol import FakeController

WRITES = [("POST", "/v1/services/web/stop"), ("POST", "/v1/services/web/start"),
          ("POST", "/v1/services/web/restart?with_dependents=1"), ("POST", "/v1/services/nosuch/stop"),
          ("POST", "/v1/reload"), ("POST", "/v1/shutdown"), ("GET", "/v1/shutdown"), ("PUT", "/v1/reload"),
          ("POST", "/v1/status"), ("DELETE", "/v1/status"), ("PUT", "/metrics"), ("POST", "/"),
          ("PATCH", "/v1/events"), ("POST", "/v1/services/web/logs"), ("HEAD", "/v1/status")]
NOT_FOUND = [("GET", "/nope"), ("POST", "/nope"), ("GET", "/v1"), ("GET", "/metrics/"), ("GET", "/v1/services/web"),
             ("DELETE", "/v1/services/web"), ("GET", "/index.html"), ("GET", "/v1/status/x")]


class Served:
    def __init__(self, controller: FakeController, info: ServeInfo, logs: list[str]) -> None:
        self.controller = controller
        self.info = info
        self.logs = logs
        assert info.http_address is not None
        self.port = info.http_address[1]

    def raw(self, data: bytes, timeout: float = 5.0) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, bytes]:
        data = self.raw(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}"
                        "Connection: close\r\n\r\n".encode() + body)
        head, _, rest = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n" + rest


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qh", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def served(short_dir: Path) -> Iterator[callable]:
    """``start(limits=..., **serve_kwargs)``: serve() with the read-only listener on 127.0.0.1, any free port."""
    with anyio.from_thread.start_blocking_portal() as portal:
        scopes: list[anyio.CancelScope] = []
        done: list[threading.Event] = []

        def start(limits: Limits = Limits(request_timeout=2.0), **kwargs) -> Served:
            (short_dir / "logs").mkdir(exist_ok=True)
            (short_dir / "logs" / "web.log").write_bytes(b"".join(b"line %d\n" % i for i in range(500)))
            controller = FakeController(short_dir / "logs", {
                "web": {"state": "ready", "pid": 812, "restarts": 1, "uptime_s": 3.2, "ready_after_s": 1.9},
                "db": {"state": "starting", "pid": 813, "uptime_s": 0.5, "ready_timeout_s": 60.0}})
            logs: list[str] = []
            finished = threading.Event()
            done.append(finished)

            async def run(task_status=anyio.TASK_STATUS_IGNORED) -> None:
                try:
                    with anyio.CancelScope() as scope:
                        scopes.append(scope)
                        await serve(controller, short_dir / f"s{len(scopes)}.sock", log=logs.append, limits=limits,
                                    http=("127.0.0.1", 0), task_status=task_status, **kwargs)
                finally:
                    finished.set()

            _, info = portal.start_task(run)
            return Served(controller, info, logs)

        yield start
        for scope in scopes:
            portal.call(scope.cancel)
        for finished in done:
            assert finished.wait(5), "serve() did not return after cancellation"


# --------------------------------------------------------------------------- what it serves


def test_page_metrics_status_events_and_logs_without_a_token(served) -> None:
    plan = {"runtime_backend": "vllm", "model_name": "Qwen-7B", "offcut_token": 0, "gpus": [
        {"index": 0, "name": "RTX 4090", "memory_total_mib": 24564, "memory_free_mib": 24000,
         "compute_capability": "8.9"}]}
    s = served(observed=Observed(plan=lambda: plan, events_total=lambda: 9))
    assert any(re.search(rf"status page and /metrics on http://127\.0\.0\.1:{s.port}/", m) for m in s.logs)

    code, resp = s.request("GET", "/")
    assert code == 200
    head, _, body = resp.partition(b"\r\n\r\n")
    headers = head.decode().lower()
    assert "content-type: text/html; charset=utf-8" in headers
    csp = re.search(r"content-security-policy: (.*)", headers).group(1)
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "x-content-type-options: nosniff" in headers
    # self-contained: no external script, style, font or image, only this origin's endpoints
    assert not re.search(rb"""(src|href)=["']?(https?:)?//""", body), "the page loads something from elsewhere"
    assert b"@import" not in body and b"url(" not in body
    for endpoint in (b"/v1/status?plan=1", b"/v1/events", b"/logs?n="):
        assert endpoint in body
    assert len(body) < 24 * 1024, f"the page is {len(body)} bytes"

    code, resp = s.request("GET", "/metrics")
    assert code == 200 and b"text/plain; version=0.0.4" in resp and b'qasup_service_up{service="web"} 1' in resp
    assert b"qasup_events_total 9" in resp

    code, resp = s.request("GET", "/v1/status?plan=1")
    doc = json.loads(resp.partition(b"\r\n\r\n")[2])
    assert code == 200 and [r["name"] for r in doc["services"]] == ["web", "db"]
    assert doc["plan"]["model_name"] == "Qwen-7B" and doc["plan"]["gpus"][0]["index"] == 0
    assert doc["stack"]["time"] > 1e9 and doc["services"][1]["ready_timeout_s"] == 60.0
    code, resp = s.request("GET", "/v1/status?names=db")
    assert code == 200 and "plan" not in json.loads(resp.partition(b"\r\n\r\n")[2])
    assert s.request("GET", "/v1/status?names=nosuch")[0] == 404

    code, resp = s.request("GET", "/v1/services/web/logs?n=3")
    assert code == 200 and resp.endswith(b"line 497\nline 498\nline 499\n")
    assert s.request("GET", "/v1/services/nosuch/logs?n=3")[0] == 404

    # the event stream: the head at once, then each event as it happens
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
        sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        poll(lambda: s.controller.subscribers, 5, "the events subscription")
        s.controller.publish({"ts": 1.0, "service": "web", "state": "stopped", "prev": "ready"})
        got = b""
        while b'"stopped"' not in got:
            got += sock.recv(4096)
    assert s.controller.calls == []


@pytest.mark.parametrize("method,path", WRITES)
def test_nothing_that_changes_state_is_reachable(served, method, path) -> None:
    s = served()
    for auth in ("", "Authorization: Bearer anything-at-all-0123456789\r\n"):
        code, resp = s.request(method, path, b'{"with_dependents": true}' if method != "GET" else b"", auth)
        assert code == 405, resp
        if method != "HEAD":
            assert b"read-only" in resp or b"use GET" in resp
    assert s.controller.calls == [] and s.controller.shutdowns == 0
    assert s.controller.services["web"]["state"] == "ready"
    # the same request on the control socket does act: only this listener refuses it
    status, _ = client.request(s.info.socket_path, "POST", "/v1/services/web/stop", timeout=5)
    assert status == 200 and s.controller.calls == [("stop", "web")]


@pytest.mark.parametrize("method,path", NOT_FOUND)
def test_unknown_paths_are_404(served, method, path) -> None:
    s = served()
    assert s.request(method, path)[0] == 404
    assert s.controller.calls == []


def test_metrics_and_status_on_the_unix_socket_too(served) -> None:
    s = served(observed=Observed(events_total=lambda: 3))
    status, body = client.request(s.info.socket_path, "GET", "/metrics", timeout=5)
    assert status == 200 and b"qasup_events_total 3" in body
    status, body = client.request(s.info.socket_path, "POST", "/metrics", timeout=5)
    assert status == 405
    status, doc = client.request(s.info.socket_path, "GET", "/v1/status?plan=1", timeout=5)
    assert status == 200 and doc["plan"] == {}
    assert client.request(s.info.socket_path, "GET", "/", timeout=5)[0] == 404   # the page: only on --http


def test_a_scrape_is_one_status_call(served) -> None:
    s = served()
    calls = 0
    real = s.controller.status

    def counting(names=()):
        nonlocal calls
        calls += 1
        return real(names)

    s.controller.status = counting
    assert s.request("GET", "/metrics")[0] == 200
    assert calls == 1


# --------------------------------------------------------------------------- the control API's limits


def test_same_limits_as_the_control_api(served) -> None:
    s = served(limits=Limits(request_timeout=0.5, max_connections=3, max_streams=1, max_header_bytes=2048))
    # a head over the limit
    code, _ = s.request("GET", "/v1/status", headers="X-Big: " + "a" * 4096 + "\r\n")
    assert code == 431
    # a slow client: half a request, then silence, is answered 408 and closed
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 4
    # one stream at most: a second /v1/events is refused while the first is open
    first = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    try:
        first.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first.recv(4096).startswith(b"HTTP/1.1 200")
        assert s.request("GET", "/v1/events")[0] == 503
        # connections over the cap get 503 at once; the Unix socket keeps its own room meanwhile
        held = [socket.create_connection(("127.0.0.1", s.port), timeout=5) for _ in range(3)]
        try:
            def refused() -> bool:
                with socket.create_connection(("127.0.0.1", s.port), timeout=5) as extra:
                    return extra.recv(4096).startswith(b"HTTP/1.1 503")
            poll(refused, 5, "a 503 for a connection over the cap")
            status, _ = client.request(s.info.socket_path, "GET", "/v1/status", timeout=5)
            assert status == 200
        finally:
            for h in held:
                h.close()
    finally:
        first.close()
    poll(lambda: s.request("GET", "/v1/status")[0] == 200, 5, "the listener to serve again")


# --------------------------------------------------------------------------- qasup up


def page_port(u) -> int:
    found = poll(lambda: re.search(r"status page and /metrics on http://127\.0\.0\.1:(\d+)/", u.out), 20,
                 lambda: f"the --http line; output:\n{u.out}")
    return int(found.group(1))


def get(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, data=b"" if method != "GET" else None),
                                    timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@together
def test_up_http_serves_read_only_and_a_stop_request_stops_nothing(stack, up) -> None:
    stack.unit("web", command=["sleep", "600"])
    u = up().start("--http", "127.0.0.1:0")
    u.wait_state("web", "ready", timeout=20)
    port = page_port(u)
    pid = u.service_status("web")["pid"]
    base = f"http://127.0.0.1:{port}"
    assert get(base + "/") == 200 and get(base + "/metrics") == 200 and get(base + "/v1/status") == 200
    for method, path in WRITES:
        assert get(base + path, method) in (405, 404 if "nosuch" in path else 405), (method, path)
    row = u.service_status("web")
    assert row["state"] == "ready" and row["pid"] == pid and os.path.exists(f"/proc/{pid}")
    assert not any(e.get("service") == "web" and e["state"] == "stopping" for e in u.events())
    assert u.stop(20) == 0


@together
def test_stack_http_key_and_the_flag_wins(stack, up) -> None:
    port, flag_port = free_port(), free_port()
    stack.stack(http=f"127.0.0.1:{port}")
    stack.unit("web", command=["sleep", "600"])
    u = up().start()
    u.wait_state("web", "ready", timeout=20)
    assert page_port(u) == port and get(f"http://127.0.0.1:{port}/v1/status") == 200
    assert u.stop(20) == 0
    u2 = up().start("--http", f"127.0.0.1:{flag_port}")
    u2.wait_state("web", "ready", timeout=20, nth=2)
    assert page_port(u2) == flag_port
    assert get(f"http://127.0.0.1:{flag_port}/metrics") == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert u2.stop(20) == 0


def test_bad_http_values_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    root = make_stack(tmp_path, {"web": 'command = ["sleep", "1"]\n'}, '[stack]\nhttp = "localhost"\n')
    r = qasup("check", cwd=root)
    assert r.returncode == 2
    assert re.search(r"qasup\.toml: stack\.http: 'localhost' is not HOST:PORT", r.stdout + r.stderr), r.stdout + r.stderr
    (root / "qasup.toml").write_text('[stack]\nhttp = 9100\n')
    r = qasup("check", cwd=root)
    assert r.returncode == 2 and "stack.http" in r.stdout + r.stderr
    (root / "qasup.toml").unlink()
    r = qasup("up", "--http", "nohost", cwd=root)
    assert r.returncode == 2 and "--http 'nohost' is not HOST:PORT" in r.stderr


@together
def test_a_port_in_use_fails_the_start_and_leaves_nothing(stack, up) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack.unit("web", command=["sleep", "600"])
        u = up().start("--http", f"127.0.0.1:{port}")
        assert u.wait(20) == 1
    assert re.search(rf"--http 127\.0\.0\.1:{port}: cannot listen there: Address already in use", u.out), u.out
    assert u.leftovers() == []
