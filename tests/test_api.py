"""The control API server (supervisor.control.server) driven over real Unix and TCP sockets.

The server runs ``serve()`` in an anyio event loop on a background thread (a blocking portal) with
a small in-memory controller; the tests talk to it with plain sockets and with supervisor.control.client.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest

from supervisor.control import client
from supervisor.control.controller import refusal_status
from supervisor.control.http import Limits
from supervisor.control.listen import DaemonAlreadyRunning, ListenError
from supervisor.control.server import ServeInfo, serve
from supervisor.engine.errors import Conflict, EngineError, Rejected, Unavailable, UnknownService
from supervisor.protocol import mask_secrets

from fakecontrol import FakeController

TOKEN = "t0ken-for-tests-0123456789"


def make_controller(log_dir: Path) -> FakeController:
    """Three services (one ready, one starting whose start fails, one disabled); status shows a masked env."""
    env = {"API_KEY": "sk-123", "PORT": "8777"}
    c = FakeController(log_dir, {
        "sanic": {"state": "ready", "pid": 812, "restarts": 0, "uptime_s": 3.2, "ready_after_s": 1.9, "env": env},
        "llm": {"state": "starting", "pid": 813, "restarts": 1, "uptime_s": 0.5, "ready_after_s": None, "env": env},
        "ocr": {"state": "disabled", "pid": None, "restarts": 0, "uptime_s": None, "ready_after_s": None,
                "env": env},
    })
    c.stack_state, c.stack_pid, c.stack_uptime = "starting", os.getpid(), 12.5
    c.start_errors["llm"] = "llm: not ready within 120s"
    return c


@dataclass
class Server:
    portal: anyio.from_thread.BlockingPortal
    controller: FakeController
    socket_path: Path
    info: ServeInfo
    logs: list[str]
    scope: anyio.CancelScope
    finished: threading.Event

    def stop(self) -> None:
        """Cancel serve() and wait until it has returned (and cleaned up)."""
        if not self.finished.is_set():
            self.portal.call(self.scope.cancel)
            assert self.finished.wait(5), "serve() did not return after cancellation"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temporary folder (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="qa", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal() as p:
        yield p


@pytest.fixture
def start_server(portal, short_dir):
    started: list[Server] = []

    def start(limits: Limits = Limits(request_timeout=1.0), socket_path: Path | None = None, **kwargs) -> Server:
        controller = make_controller(short_dir)
        path = socket_path or short_dir / "state" / "qasup.sock"
        logs: list[str] = []
        scopes: list[anyio.CancelScope] = []
        finished = threading.Event()

        async def run(task_status=anyio.TASK_STATUS_IGNORED) -> None:
            try:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    await serve(controller, path, log=logs.append, limits=limits, task_status=task_status, **kwargs)
            finally:
                finished.set()

        _, info = portal.start_task(run)
        server = Server(portal, controller, path, info, logs, scopes[0], finished)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server) -> Server:
    return start_server()


# --------------------------------------------------------------------------- helpers


def raw_exchange(path: Path, data: bytes, *, half_close: bool = True, timeout: float = 5.0) -> bytes:
    """Send raw bytes, then read everything the server answers until it closes the connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    try:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def status_code(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response.split(b" ", 2)[1])


def body_json(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def assert_status_ok(server: Server) -> None:
    """The daemon still answers a normal status request correctly and was not asked to shut down."""
    status, payload = client.request(server.socket_path, "GET", "/v1/status", timeout=5)
    assert status == 200
    assert [s["name"] for s in payload["services"]] == ["sanic", "llm", "ocr"]
    assert server.controller.shutdowns == 0


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: qasup\r\n\r\n".encode()


def post(path: str, body: bytes = b"", extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: qasup\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------- endpoints


def test_status_returns_controller_json_with_secrets_masked(server):
    status, payload = client.request(server.socket_path, "GET", "/v1/status")
    assert status == 200
    assert payload["stack"]["state"] == "starting"
    sanic = payload["services"][0]
    assert sanic["name"] == "sanic" and sanic["pid"] == 812 and sanic["ready_after_s"] == 1.9
    assert sanic["env"] == {"API_KEY": "***", "PORT": "8777"}


def test_status_names_filter_and_unknown_or_invalid_names(server):
    status, payload = client.request(server.socket_path, "GET", "/v1/status?names=llm")
    assert status == 200 and [s["name"] for s in payload["services"]] == ["llm"]
    status, payload = client.request(server.socket_path, "GET", "/v1/status?names=llm,nope")
    assert status == 404 and "nope" in payload["error"]
    status, payload = client.request(server.socket_path, "GET", "/v1/status?names=..%2Fx")
    assert status == 400


def test_status_as_a_table_with_its_options_checked(server):
    sp = server.socket_path
    code, headers, body = client.fetch(sp, "GET", "/v1/status?format=table&names=llm&colour=1&columns=60")
    assert code == 200 and headers["content-type"] == "text/plain; charset=utf-8"
    lines = body.decode().splitlines()
    assert lines[0].startswith("stack \x1b[") and lines[2].startswith("llm ") and len(lines) == 3
    assert "\x1b[33mstarting" in lines[2] and headers["x-qasup-not-ready"] == "1"   # llm is starting
    assert "API_KEY" not in body.decode() and "PORT" not in body.decode()   # no env in the table (not "8777": a pid)
    for bad, why in (("format=xml", "format must be json or table"), ("format=table&columns=0", "columns must"),
                     ("format=table&columns=x", "columns must"), ("format=table&colour=maybe", "colour must"),
                     ("all=1", "go with format=table"), ("format=table&names=nope", "unknown service 'nope'"),
                     ("format=table&width=9", "unknown query parameter 'width'")):
        status, payload = client.request(sp, "GET", f"/v1/status?{bad}")
        assert status in (400, 404) and why in payload["error"], (bad, payload)


def test_start_stop_restart(server):
    sp = server.socket_path
    assert client.request(sp, "POST", "/v1/services/sanic/stop") == (200, {"name": "sanic", "state": "stopped"})
    assert client.request(sp, "POST", "/v1/services/sanic/start") == (200, {"name": "sanic", "state": "ready"})
    status, payload = client.request(sp, "POST", "/v1/services/llm/start")
    assert status == 409 and payload == {"error": "llm: not ready within 120s"}
    assert client.request(sp, "POST", "/v1/services/sanic/restart")[0] == 200
    assert client.request(sp, "POST", "/v1/services/sanic/restart?with_dependents=1")[0] == 200
    assert client.request(sp, "POST", "/v1/services/sanic/restart", {"with_dependents": True})[0] == 200
    restarts = [c for c in server.controller.calls if c[0] == "restart"]
    assert restarts == [("restart", "sanic", False), ("restart", "sanic", True), ("restart", "sanic", True)]
    status, payload = client.request(sp, "POST", "/v1/services/sanic/restart", {"with_dependents": "yes"})
    assert status == 400
    status, payload = client.request(sp, "POST", "/v1/services/sanic/start", {"bogus": 1})
    assert status == 400 and "bogus" in payload["error"]


def test_unknown_service_404_and_wrong_method_405(server):
    sp = server.socket_path
    status, payload = client.request(sp, "POST", "/v1/services/nope/start")
    assert status == 404 and payload == {"error": "unknown service 'nope'"}
    response = raw_exchange(sp, get("/v1/services/sanic/start"))
    assert status_code(response) == 405 and b"\r\nallow: post\r\n" in response.lower()
    assert client.request(sp, "POST", "/v1/status")[0] == 405
    assert client.request(sp, "GET", "/v1/nothing-here")[0] == 404
    assert ("start", "nope") not in server.controller.calls


def test_logs_tail_and_validation(server):
    lines = b"".join(b"line %d\n" % i for i in range(300))
    (server.controller.log_dir / "sanic.log").write_bytes(lines)
    status, payload = client.request(server.socket_path, "GET", "/v1/services/sanic/logs?n=3")
    assert status == 200 and payload == b"line 297\nline 298\nline 299\n"
    status, payload = client.request(server.socket_path, "GET", "/v1/services/sanic/logs")
    assert status == 200 and payload.count(b"\n") == 100
    # no log file yet: empty, not an error
    assert client.request(server.socket_path, "GET", "/v1/services/llm/logs?n=5") == (200, b"")
    for bad in ("n=-1", "n=abc", "n=100001", "follow=maybe", "lines=3"):
        assert client.request(server.socket_path, "GET", f"/v1/services/sanic/logs?{bad}")[0] == 400, bad
    assert client.request(server.socket_path, "GET", "/v1/services/nope/logs")[0] == 404


def test_large_log_tail_arrives_intact(server):
    lines = b"".join(b"%06d %s\n" % (i, b"x" * 90) for i in range(40_000))  # about 3.9 MB
    (server.controller.log_dir / "sanic.log").write_bytes(lines)
    status, payload = client.request(server.socket_path, "GET", "/v1/services/sanic/logs?n=40000")
    assert status == 200 and payload == lines


def test_logs_follow_streams_until_client_leaves(start_server):
    server = start_server(Limits(request_timeout=1.0, max_connections=1))
    log = server.controller.log_dir / "sanic.log"
    log.write_bytes(b"old 1\nold 2\nold 3\n")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(server.socket_path))
    sock.sendall(get("/v1/services/sanic/logs?n=2&follow=1"))
    received = b""
    while b"old 3\n" not in received:
        received += sock.recv(65536)
    assert b"transfer-encoding: chunked" in received.lower()
    assert b"old 1" not in received and b"old 2\n" in received
    with log.open("ab") as f:
        f.write(b"new line\n")
    while b"new line\n" not in received:
        received += sock.recv(65536)
    sock.close()
    # max_connections=1: the slot is free again only once the follower has ended.
    def slot_free() -> bool:
        try:
            return client.request(server.socket_path, "GET", "/v1/status", timeout=2)[0] == 200
        except client.NoDaemon:
            return False

    wait_until(slot_free)


def test_events_stream_and_end(server):
    received: list[bytes] = []

    def consume() -> None:
        for line in client.stream_lines(server.socket_path, "/v1/events", timeout=5):
            received.append(line)

    thread = threading.Thread(target=consume)
    thread.start()
    wait_until(lambda: len(server.controller.subscribers) == 1)
    server.portal.call(server.controller.publish, {"service": "llm", "state": "ready", "token": "abc"})
    server.portal.call(server.controller.publish, {"service": "sanic", "state": "stopping"})
    wait_until(lambda: len(received) == 2)
    server.portal.call(server.controller.end_events)
    thread.join(5)
    assert not thread.is_alive()
    assert [json.loads(x) for x in received] == [
        {"service": "llm", "state": "ready", "token": "***"},
        {"service": "sanic", "state": "stopping"},
    ]


def test_events_unsubscribed_when_client_goes_away(server):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(server.socket_path))
    sock.sendall(get("/v1/events"))
    head = sock.recv(65536)
    assert status_code(head) == 200 and b"application/x-ndjson" in head
    assert len(server.controller.subscribers) == 1
    sock.close()
    wait_until(lambda: not server.controller.subscribers)
    assert_status_ok(server)


def test_streams_are_capped_leaving_room_for_status(start_server):
    server = start_server(Limits(request_timeout=1.0, max_streams=1))
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    first.settimeout(5)
    first.connect(str(server.socket_path))
    first.sendall(get("/v1/events"))
    assert status_code(first.recv(65536)) == 200
    second = raw_exchange(server.socket_path, get("/v1/events"))
    assert status_code(second) == 503 and "too many streaming clients" in body_json(second)["error"]
    assert_status_ok(server)
    assert refused(server.socket_path) == {"connection_limit": 0, "stream_limit": 1, "idle_shed": 0,
                                           "out_of_fds_reserve": 0, "out_of_fds_request": 0}
    first.close()
    wait_until(lambda: not server.controller.subscribers)


def refused(path) -> dict[str, float]:
    """``qasup_api_refused_total`` by reason, from the server's ``/metrics`` (parsed by prometheus_client)."""
    from prometheus_client import parser

    response = raw_exchange(path, get("/metrics"))
    assert status_code(response) == 200, response[:300]
    text = response.split(b"\r\n\r\n", 1)[1].decode()
    return {s.labels["reason"]: s.value for fam in parser.text_string_to_metric_families(text) for s in fam.samples
            if s.name == "qasup_api_refused_total"}


def test_http_1_0_client(server):
    response = raw_exchange(server.socket_path, b"GET /v1/status?names=sanic HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 ") and body_json(response)["services"][0]["name"] == "sanic"


def test_reload_and_reload_error(server):
    assert client.request(server.socket_path, "POST", "/v1/reload") == (
        200, {"changed": ["sanic"], "added": [], "removed": []})
    server.controller.reload_error = "services.d/x.toml: command: missing"
    assert client.request(server.socket_path, "POST", "/v1/reload") == (
        400, {"error": "services.d/x.toml: command: missing"})


def test_shutdown_only_by_post(server):
    assert client.request(server.socket_path, "GET", "/v1/shutdown")[0] == 405
    assert server.controller.shutdowns == 0
    assert client.request(server.socket_path, "POST", "/v1/shutdown") == (202, {"shutting_down": True})
    assert server.controller.shutdowns == 1
    assert any("shutdown requested" in line for line in server.logs)


def test_expect_100_continue(server):
    body = b'{"with_dependents": true}'
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(server.socket_path))
    head = post("/v1/services/sanic/restart", b"", "Expect: 100-continue\r\nConnection: close\r\n")
    sock.sendall(head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)))
    assert sock.recv(1024).startswith(b"HTTP/1.1 100 ")
    sock.sendall(body)
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    assert status_code(response) == 200
    assert ("restart", "sanic", True) in server.controller.calls


# --------------------------------------------------------------------------- socket set-up


def test_socket_and_folder_modes_and_removal_on_exit(start_server, short_dir):
    server = start_server()
    assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(server.socket_path).st_mode)
    assert stat.S_IMODE(os.stat(server.socket_path.parent).st_mode) == 0o700
    server.stop()
    assert not server.socket_path.exists()


def test_stale_socket_replaced_live_one_refused(start_server, portal, short_dir):
    path = short_dir / "qasup.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crashed daemon leaves behind
    server = start_server(socket_path=path)
    assert_status_ok(server)
    with pytest.raises(DaemonAlreadyRunning, match="already answering"):
        portal.call(lambda: serve(make_controller(short_dir), path, log=lambda m: None))
    assert_status_ok(server)  # the live daemon's socket was left alone


def test_regular_file_at_socket_path_is_not_replaced(portal, short_dir):
    path = short_dir / "qasup.sock"
    path.write_text("precious")
    with pytest.raises(ListenError, match="not a socket"):
        portal.call(lambda: serve(make_controller(short_dir), path, log=lambda m: None))
    assert path.read_text() == "precious"


# --------------------------------------------------------------------------- TCP and tokens


def tcp_request(address: tuple[str, int], request: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_tcp_listener_requires_bearer_token(start_server):
    server = start_server(listen=("127.0.0.1", 0), token=TOKEN)
    address = server.info.tcp_address
    assert address is not None and address[1] > 0
    missing = tcp_request(address, get("/v1/status"))
    assert status_code(missing) == 401 and b"www-authenticate: bearer" in missing.lower()
    wrong = tcp_request(address, get("/v1/status").replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer " + b"x" * 26 + b"\r\n\r\n"))
    assert status_code(wrong) == 401
    basic = tcp_request(address, get("/v1/status").replace(b"\r\n\r\n", b"\r\nAuthorization: Basic " + TOKEN.encode() + b"\r\n\r\n"))
    assert status_code(basic) == 401
    right = tcp_request(address, get("/v1/status").replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()))
    assert status_code(right) == 200 and body_json(right)["services"][0]["name"] == "sanic"
    # no token needed on the Unix socket (protected by its 0600 mode)
    assert_status_ok(server)


@pytest.mark.parametrize("token", [None, "", "short-token-19-char"])
def test_tcp_listener_refused_without_a_long_token(portal, short_dir, token):
    path = short_dir / "qasup.sock"
    with pytest.raises(ListenError, match="QASUP_TOKEN"):
        portal.call(lambda: serve(make_controller(short_dir), path, listen=("127.0.0.1", 0), token=token))
    assert not path.exists()


# --------------------------------------------------------------------------- hostile clients

HOSTILE = [
    ("garbage bytes", b"\x00\xff\xfe\x13 garbage \x7f\r\n\r\n", 400),
    ("http/0.9 request", b"GET /v1/status\r\n\r\n", 400),
    ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("missing host", b"GET /v1/status HTTP/1.1\r\n\r\n", 400),
    ("header without colon", b"GET /v1/status HTTP/1.1\r\nHost: q\r\nBrokenHeader\r\n\r\n", 400),
    ("bad json", post("/v1/services/sanic/restart", b'{"with_dependents": tru'), 400),
    ("json array body", post("/v1/services/sanic/restart", b"[true]"), 400),
    ("invalid utf-8 body", post("/v1/services/sanic/restart", b'{"\xff": 1}'), 400),
    ("dot-dot name", post("/v1/services/../start"), 400),
    ("encoded traversal", post("/v1/services/%2e%2e%2fetc%2fpasswd/start"), 400),
    ("encoded NUL in name", post("/v1/services/san%00ic/start"), 400),
    ("raw NUL in target", b"POST /v1/services/san\x00ic/start HTTP/1.1\r\nHost: q\r\n\r\n", 400),
    ("invalid percent-encoding", post("/v1/services/%zz/start"), 400),
    ("truncated percent-encoding", get("/v1/status?names=sanic%2"), 400),
    ("invalid utf-8 in path", post("/v1/services/%ff%fe/start"), 400),
    ("upper-case name", post("/v1/services/SANIC/start"), 400),
    ("64-character name", post("/v1/services/" + "a" * 64 + "/start"), 400),
    ("name with newline", post("/v1/services/sanic%0a/start"), 400),
    ("absolute-form target", b"GET http://evil/v1/status HTTP/1.1\r\nHost: q\r\n\r\n", 400),
    ("huge content-length, no body", b"POST /v1/reload HTTP/1.1\r\nHost: q\r\nContent-Length: 99999999999\r\n\r\n", 413),
    ("body over 64 KiB", post("/v1/reload", b"{" + b" " * 70_000 + b"}"), 413),
    ("non-numeric content-length", b"POST /v1/reload HTTP/1.1\r\nHost: q\r\nContent-Length: ten\r\n\r\n", 400),
    ("conflicting content-lengths", b"POST /v1/reload HTTP/1.1\r\nHost: q\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("content-length and chunked", b"POST /v1/reload HTTP/1.1\r\nHost: q\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunked garbage", b"POST /v1/reload HTTP/1.1\r\nHost: q\r\nTransfer-Encoding: chunked\r\n\r\nzzz\r\nhello\r\n", 400),
    ("chunked body over the limit", b"POST /v1/reload HTTP/1.1\r\nHost: q\r\nTransfer-Encoding: chunked\r\n\r\n" + (b"8000\r\n" + b"x" * 0x8000 + b"\r\n") * 3 + b"0\r\n\r\n", 413),
    ("unknown method", b"BREW /v1/status HTTP/1.1\r\nHost: q\r\n\r\n", 405),
    ("shutdown by GET", get("/v1/shutdown"), 405),
    ("shutdown by DELETE", b"DELETE /v1/shutdown HTTP/1.1\r\nHost: q\r\n\r\n", 405),
    ("20 KB target", get("/v1/status?x=" + "a" * 20_000), 431),
    ("10 MB header", b"GET /v1/status HTTP/1.1\r\nHost: q\r\nX-Big: " + b"a" * 10_000_000 + b"\r\n\r\n", 431),
    ("too many query parameters", get("/v1/status?" + "&".join(f"p{i}=1" for i in range(40))), 400),
    ("duplicate query parameter", get("/v1/services/sanic/logs?n=1&n=2"), 400),
    ("unknown query parameter", get("/v1/status?nmaes=sanic"), 400),
    ("bad with_dependents", post("/v1/services/sanic/restart?with_dependents=maybe"), 400),
    ("path outside the API", get("/../../etc/passwd"), 404),
    ("unknown service", post("/v1/services/nope/stop"), 404),
]


@pytest.mark.parametrize("name, data, expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_gets_error_and_daemon_survives(server, name, data, expected):
    response = raw_exchange(server.socket_path, data)
    assert status_code(response) == expected
    assert "error" in body_json(response)
    assert server.controller.calls == [] or all(c[0] == "has_service" for c in server.controller.calls)
    assert_status_ok(server)


def test_malformed_requests_are_logged(server):
    raw_exchange(server.socket_path, b"\x00\xffjunk\r\n\r\n")
    assert any("malformed request" in line for line in server.logs)


def test_pipelined_requests_all_answered_in_order(server):
    data = get("/v1/status?names=llm") + get("/v1/status?names=sanic") + post("/v1/services/nope/stop")
    response = raw_exchange(server.socket_path, data)
    assert response.count(b"HTTP/1.1 ") == 3
    first, second = response.index(b'"name": "llm"'), response.index(b'"name": "sanic"')
    assert first < second and b"HTTP/1.1 404" in response[second:]
    assert_status_ok(server)


def test_half_request_then_silence_times_out(start_server):
    server = start_server(Limits(request_timeout=0.3))
    started = time.monotonic()
    response = raw_exchange(server.socket_path, b"GET /v1/status HTTP/1.1\r\nHo", half_close=False)
    assert status_code(response) == 408
    assert 0.25 < time.monotonic() - started < 3
    # a body promised but never sent times out too
    response = raw_exchange(server.socket_path, post("/v1/reload", b"{}")[:-2], half_close=False)
    assert status_code(response) == 408
    assert_status_ok(server)


def test_idle_keep_alive_connection_closed_silently(start_server):
    server = start_server(Limits(request_timeout=0.3))
    response = raw_exchange(server.socket_path, get("/v1/status"), half_close=False)
    assert response.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 408" not in response   # (a bare "408" can be a pid)


def test_client_vanishing_mid_body(server):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.socket_path))
    sock.sendall(post("/v1/reload", b"{" + b" " * 1000 + b"}")[:-500])
    sock.close()
    assert_status_ok(server)
    assert server.controller.calls == []


def test_500_connections_at_once(start_server):
    server = start_server(Limits(request_timeout=0.5, max_connections=32))
    socks = []
    try:
        for _ in range(500):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(server.socket_path))  # blocking: waits while the backlog is full
            sock.settimeout(5)
            socks.append(sock)
        # The excess is answered 503 and closed promptly, not queued until the others time out.
        started = time.monotonic()
        refused = 0
        for sock in socks[-100:]:
            data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 503 ")
            refused += 1
        assert refused == 100 and time.monotonic() - started < 0.5 + 2
    finally:
        for sock in socks:
            sock.close()
    def answers() -> bool:
        try:
            return client.request(server.socket_path, "GET", "/v1/status", timeout=2)[0] == 200
        except client.NoDaemon:
            return False

    wait_until(answers)
    assert_status_ok(server)
    assert any("refusing new ones" in line for line in server.logs)


# --------------------------------------------------------------------------- helpers


def test_mask_secrets_is_recursive_and_case_insensitive():
    value = {"env": {"OPENAI_API_KEY": "sk", "db_password": "pw", "HF_TOKEN": None, "PORT": 1},
             "list": [{"secret_value": 3}], "name": "x"}
    assert mask_secrets(value) == {"env": {"OPENAI_API_KEY": "***", "db_password": "***", "HF_TOKEN": None,
                                           "PORT": 1}, "list": [{"secret_value": "***"}], "name": "x"}
    assert value["env"]["OPENAI_API_KEY"] == "sk"  # the input is not modified


def test_internal_controller_error_is_500_not_a_crash(server):
    def broken(names=()):
        raise RuntimeError("engine bug")

    server.controller.status = broken
    status, payload = client.request(server.socket_path, "GET", "/v1/status")
    assert status == 500 and "engine bug" in payload["error"]
    assert any("engine bug" in line for line in server.logs)


# --------------------------------------------------------------------------- engine refusals


class _OtherRefusal(EngineError):
    """An EngineError kind the server has no entry for."""


@pytest.mark.parametrize(("error", "status"), [
    (UnknownService("unknown service 'x'"), 404), (Conflict("x is disabled by the plan"), 409),
    (Unavailable("this daemon cannot reload"), 400), (Rejected("services.d/x.toml: bad"), 400),
    (_OtherRefusal("no"), 409), (EngineError("no"), 409),
])
def test_engine_refusals_map_to_http_statuses(server, error, status):
    async def refuse(name, with_dependents=False):
        raise error

    server.controller.restart = refuse
    answer, payload = client.request(server.socket_path, "POST", "/v1/services/sanic/restart")
    assert (answer, payload) == (status, {"error": str(error)})
    assert refusal_status(error) == status


def test_a_refusal_from_a_sync_controller_method_is_mapped_too(server):
    def gone(name):
        raise UnknownService(f"unknown service {name!r}")

    server.controller.log_path = gone
    status, payload = client.request(server.socket_path, "GET", "/v1/services/sanic/logs")
    assert status == 404 and payload == {"error": "unknown service 'sanic'"}
