"""The control verbs (supervisor.cli.control_verbs) run in-process against a real API server on a Unix socket.

A tiny argparse parser built with ``control_args.register()`` parses the command line the way cli.py does;
the server is ``supervisor.control.server.serve()`` with an in-memory controller on a background event loop.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.from_thread
import pytest

from supervisor.cli import control_args, render
from supervisor.cli import control_verbs as ctl
from supervisor.control.server import serve

from fakecontrol import FakeController

ROOT = Path(__file__).resolve().parents[1]


def make_controller(log_dir: Path) -> FakeController:
    """Services with settable states; shutdown ends the server (see Daemon)."""
    c = FakeController(log_dir, {
        "sanic": {"state": "ready", "pid": 812, "restarts": 0, "uptime_s": 3725.0, "ready_after_s": 1.94},
        "llm-worker": {"state": "ready", "pid": 9, "restarts": 12, "uptime_s": 42.0, "ready_after_s": 0.35},
        "ocr": {"state": "disabled", "pid": None, "restarts": 0, "uptime_s": None, "ready_after_s": None},
    })
    c.reload_result = {"changed": ["sanic", "ocr"]}
    return c


class Daemon:
    """serve() on a background event loop; ``stop()`` cancels it and waits for the clean-up."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, socket_path: Path, log_dir: Path) -> None:
        self.portal = portal
        self.socket_path = socket_path
        self.controller = make_controller(log_dir)
        self.finished = threading.Event()
        self.scope: anyio.CancelScope | None = None
        portal.start_task(self._run)
        self.controller.on_shutdown = lambda: self.scope.cancel()

    async def _run(self, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with anyio.CancelScope() as self.scope:
                await serve(self.controller, self.socket_path, log=lambda m: None, task_status=task_status)
        finally:
            self.finished.set()

    def call(self, func, *args):
        return self.portal.call(func, *args)

    def stop(self) -> None:
        if not self.finished.is_set():
            self.portal.call(self.scope.cancel)
            assert self.finished.wait(5)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def portal():
    with anyio.from_thread.start_blocking_portal() as p:
        yield p


@pytest.fixture
def daemon(portal, short_dir) -> Iterator[Daemon]:
    d = Daemon(portal, short_dir / "qasup.sock", short_dir)
    yield d
    d.stop()


def parse(socket_path: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qasup")
    parser.add_argument("--socket")
    sub = parser.add_subparsers(dest="verb")
    control_args.register(sub)
    return parser.parse_args(["--socket", str(socket_path), *argv])


def run(socket_path: Path, *argv: str) -> int:
    return ctl.run(parse(socket_path, *argv))


# --------------------------------------------------------------------------- status


def test_status_table_all_ready_exit_0(daemon, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert run(daemon.socket_path, "status") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "stack ready  pid 1  up 1h02m  2/2 services ready"
    assert "\x1b[" not in out  # captured stdout is not a terminal: no colour
    header = lines[1]
    assert header.split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "READY", "LAST", "ERROR"]
    rows = {line.split()[0]: line for line in lines[2:-1]}
    assert rows["sanic"].split() == ["sanic", "ready", "812", "1h02m", "0", "1.9s", "-"]
    assert rows["llm-worker"].split() == ["llm-worker", "ready", "9", "42s", "12", "350ms", "-"]
    assert "ocr" not in rows   # disabled by the plan: hidden, and said so under the table
    assert lines[-1] == "(1 service disabled by the plan not shown: qasup status --all)"
    assert run(daemon.socket_path, "status", "--all") == 0
    every = capsys.readouterr().out.splitlines()
    assert {line.split()[0]: line for line in every[2:]}["ocr"].split() == ["ocr", "disabled", "-", "-", "0", "-", "-"]
    # aligned: every column starts at the same offset in every row
    for title in ("STATE", "UPTIME", "READY", "LAST ERROR"):
        col = header.index(title)
        for row in rows.values():
            assert row[col - 1] == " " and row[col] != " ", (title, row)


def test_status_not_ready_exit_3_shows_last_error(daemon, capsys):
    daemon.controller.services["llm-worker"].update(
        state="backoff", pid=None, last_error="CUDA out of memory\n\x1b[31mtraceback\x1b[0m", exit_code=1)
    daemon.controller.stack_state = "degraded"
    assert run(daemon.socket_path, "status") == 3
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("llm-worker"))
    assert "backoff" in row and "CUDA out of memory | ?[31mtraceback?[0m" in row  # no raw escapes
    assert out.startswith("stack degraded")


def test_status_names_and_json(daemon, capsys):
    assert run(daemon.socket_path, "status", "sanic", "--json") == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload == daemon.controller.status(["sanic"])
    daemon.controller.services["sanic"]["state"] = "starting"
    assert run(daemon.socket_path, "status", "--json") == 3
    assert json.loads(capsys.readouterr().out)["services"][0]["state"] == "starting"


def test_status_unknown_service_exit_1(daemon, capsys):
    assert run(daemon.socket_path, "status", "nope") == 1
    assert "unknown service 'nope'" in capsys.readouterr().err


def test_the_daemon_draws_the_table_and_the_client_parses_no_json(daemon):
    """``qasup status`` asks for ``format=table``: the same table as drawn from the JSON, the exit code from
    the X-Qasup-Not-Ready header, and neither argparse nor json (nor pathlib) imported by the client."""
    from supervisor.control import client

    code, headers, body = client.fetch(daemon.socket_path, "GET", "/v1/status?format=table&all=1")
    assert code == 200 and headers["content-type"].startswith("text/plain") and headers["x-qasup-not-ready"] == "0"
    _, payload = client.request(daemon.socket_path, "GET", "/v1/status")
    assert body.decode() == render.render_status(payload, show_disabled=True) + "\n"
    daemon.controller.services["sanic"]["state"] = "starting"
    assert client.fetch(daemon.socket_path, "GET", "/v1/status?format=table")[1]["x-qasup-not-ready"] == "1"
    probe = ("import sys; sys.argv = ['qasup', '--socket', sys.argv[1], 'status']; "
             "from supervisor.cli.main import main; code = main(); "
             "print(code, sorted(m for m in ('argparse', 'json', 'pathlib', 'gettext') if m in sys.modules))")
    # -S: no site, so no editable-install finder (which imports pathlib itself); the checkout on PYTHONPATH
    out = subprocess.run([sys.executable, "-S", "-c", probe, str(daemon.socket_path)], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.splitlines()[-1] == "3 []"
    assert "starting" in out


def test_status_draws_the_table_itself_for_a_daemon_without_format_table(short_dir, capsys):
    """A daemon of an older version answers 400 to ``format=table``: the client asks for the JSON and draws it."""
    path = short_dir / "old.sock"
    payload = {"stack": {"state": "ready", "pid": 7, "uptime_s": 5.0},
               "services": [{"name": "web", "state": "ready", "pid": 70, "restarts": 0, "uptime_s": 5.0,
                             "ready_after_s": 0.2}]}
    seen: list[bytes] = []
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(4)

    def serve_two() -> None:
        for _ in range(2):
            conn, _ = srv.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                seen.append(head.split(b"\r\n", 1)[0])
                if b"format=table" in head:
                    status, body = b"400 Bad Request", b'{"error": "unknown query parameter \'format\'"}'
                else:
                    status, body = b"200 OK", json.dumps(payload).encode()
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)

    t = threading.Thread(target=serve_two, daemon=True)
    t.start()
    try:
        assert run(path, "status") == 0
    finally:
        t.join(5)
        srv.close()
    assert [line.split()[1].decode() for line in seen] == ["/v1/status?format=table", "/v1/status"]
    out = capsys.readouterr().out
    assert out == render.render_status(payload, show_disabled=False) + "\n" and "web" in out


def test_no_daemon_exit_4_names_the_socket(short_dir, capsys):
    missing = short_dir / "none.sock"
    for argv in (["status"], ["start", "x"], ["logs", "x"], ["reload"], ["shutdown"], ["events"]):
        assert run(missing, *argv) == 4, argv
        assert str(missing) in capsys.readouterr().err
    stale = short_dir / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()
    assert run(stale, "status") == 4
    assert "connection refused" in capsys.readouterr().err


def test_colour_only_for_terminals_and_not_with_no_color(monkeypatch):
    payload = {"stack": {"state": "ready"}, "services": [{"name": "a", "state": "failed", "last_error": "x"}]}
    coloured = render.render_status(payload, colour=True)
    assert "\x1b[1;31mfailed\x1b[0m" in coloured
    plain = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert plain == render.render_status(payload, colour=False)

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert render.use_colour(Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not render.use_colour(Tty())


def test_long_last_error_truncated_to_terminal_width():
    payload = {"stack": {"state": "degraded"}, "services": [{"name": "a", "state": "failed", "last_error": "e" * 500}]}
    for line in render.render_status(payload, width=80).splitlines():
        assert len(line) <= 80


# --------------------------------------------------------------------------- actions


def test_start_stop_restart(daemon, capsys):
    assert run(daemon.socket_path, "stop", "sanic", "llm-worker") == 0
    assert capsys.readouterr().out == "sanic: stopped, now stopped\nllm-worker: stopped, now stopped\n"
    assert run(daemon.socket_path, "start", "sanic") == 0
    assert run(daemon.socket_path, "restart", "sanic", "--with-dependents") == 0
    assert run(daemon.socket_path, "restart", "llm-worker") == 0
    assert daemon.controller.calls[-2:] == [("restart", "sanic", True), ("restart", "llm-worker", False)]


def test_action_failures_exit_1(daemon, capsys):
    assert run(daemon.socket_path, "start", "ocr", "sanic") == 1  # the failure does not stop the rest
    captured = capsys.readouterr()
    assert "start ocr: ocr is disabled by the plan" in captured.err and "sanic: started" in captured.out
    assert run(daemon.socket_path, "stop", "nope") == 1
    assert "unknown service 'nope'" in capsys.readouterr().err
    assert run(daemon.socket_path, "stop", "../etc") == 1
    assert "invalid service name" in capsys.readouterr().err


# --------------------------------------------------------------------------- logs, events


def test_logs_last_lines_and_unknown_service(daemon, capsysbinary):
    (daemon.controller.log_dir / "sanic.log").write_bytes(b"".join(b"l%d\n" % i for i in range(50)))
    assert run(daemon.socket_path, "logs", "sanic", "-n", "3") == 0
    assert capsysbinary.readouterr().out == b"l47\nl48\nl49\n"
    assert run(daemon.socket_path, "logs", "nope") == 1
    assert b"unknown service" in capsysbinary.readouterr().err


def test_logs_follow_until_daemon_ends(daemon, capsysbinary):
    log = daemon.controller.log_dir / "sanic.log"
    log.write_bytes(b"a\nb\n")
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run(daemon.socket_path, "logs", "sanic", "-n", "1", "-f")))
    thread.start()
    seen = b""

    def wait_for(data: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 5
        while data not in seen:
            assert time.monotonic() < deadline, seen
            seen += capsysbinary.readouterr().out
            time.sleep(0.01)

    wait_for(b"b\n")
    with log.open("ab") as f:
        f.write(b"c\n")
    wait_for(b"c\n")
    assert seen == b"b\nc\n"
    daemon.stop()  # the daemon ends the stream cleanly when it stops: exit 0
    thread.join(5)
    assert result == [0]


def test_events_printed_as_json_lines(daemon, capsys):
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run(daemon.socket_path, "events")))
    thread.start()
    deadline = time.monotonic() + 5
    while not daemon.controller.subscribers:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    daemon.call(daemon.controller.subscribers[0].send_nowait, {"service": "sanic", "state": "ready"})
    daemon.call(daemon.controller.subscribers[0].close)
    thread.join(5)
    assert result == [0]
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == [{"service": "sanic", "state": "ready"}]


# --------------------------------------------------------------------------- wait-ready


def test_wait_ready_immediate_and_check_once(daemon, capsys):
    assert run(daemon.socket_path, "wait-ready") == 0  # ocr is disabled: not awaited
    daemon.controller.services["sanic"]["state"] = "starting"
    started = time.monotonic()
    assert run(daemon.socket_path, "wait-ready", "--timeout", "0") == 1
    assert time.monotonic() - started < 1
    assert "sanic (starting)" in capsys.readouterr().err
    assert run(daemon.socket_path, "wait-ready", "llm-worker", "--timeout", "0") == 0


def test_wait_ready_waits_for_transition(daemon):
    daemon.controller.services["sanic"]["state"] = "starting"
    timer = threading.Timer(0.3, lambda: daemon.controller.services["sanic"].update(state="ready"))
    timer.start()
    started = time.monotonic()
    assert run(daemon.socket_path, "wait-ready", "--timeout", "10s") == 0
    assert 0.25 < time.monotonic() - started < 2
    timer.join()


def test_wait_ready_fails_fast_on_failed_or_disabled(daemon, capsys):
    daemon.controller.services["sanic"].update(state="failed", last_error="gave up after 5 restarts")
    started = time.monotonic()
    assert run(daemon.socket_path, "wait-ready", "--timeout", "30s") == 1
    assert "sanic failed: gave up after 5 restarts" in capsys.readouterr().err
    assert run(daemon.socket_path, "wait-ready", "ocr", "--timeout", "30s") == 1
    assert "disabled" in capsys.readouterr().err
    assert time.monotonic() - started < 2
    assert run(daemon.socket_path, "wait-ready", "nope") == 1


def test_wait_ready_times_out(daemon, capsys):
    daemon.controller.services["sanic"]["state"] = "waiting"
    started = time.monotonic()
    assert run(daemon.socket_path, "wait-ready", "--timeout", "400ms") == 1
    assert 0.35 < time.monotonic() - started < 2
    assert "not ready after 400ms: waiting for sanic (waiting)" in capsys.readouterr().err


def test_wait_ready_without_daemon_exits_1_and_waits_for_it(portal, short_dir, capsys):
    path = short_dir / "later.sock"
    assert run(path, "wait-ready", "--timeout", "0") == 1
    assert str(path) in capsys.readouterr().err
    daemons: list[Daemon] = []
    timer = threading.Timer(0.3, lambda: daemons.append(Daemon(portal, path, short_dir)))
    timer.start()
    try:
        assert run(path, "wait-ready", "--timeout", "10s") == 0
    finally:
        timer.join()
        for d in daemons:
            d.stop()


# --------------------------------------------------------------------------- reload, shutdown


def test_reload_ok_and_invalid(daemon, capsys):
    assert run(daemon.socket_path, "reload") == 0
    assert capsys.readouterr().out == "reloaded; changed: sanic, ocr\n"
    daemon.controller.reload_error = "services.d/sanic.toml: ready.timeout: 'x' is not a duration"
    assert run(daemon.socket_path, "reload") == 2
    err = capsys.readouterr().err
    assert "old one stays" in err and "services.d/sanic.toml: ready.timeout" in err


def test_shutdown_and_wait(daemon, capsys):
    assert run(daemon.socket_path, "shutdown", "--wait", "--timeout", "5s") == 0
    assert daemon.controller.calls == [("shutdown",)]
    assert capsys.readouterr().out == "daemon stopped\n"
    assert daemon.finished.wait(5) and not daemon.socket_path.exists()


# --------------------------------------------------------------------------- helpers, help, start-up


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (0.35, "350ms"), (1.94, "1.9s"), (42.7, "42s"), (303, "5m03s"), (3725, "1h02m"), (183600, "2d03h"),
])
def test_format_duration(seconds, text):
    assert render.format_duration(seconds) == text


def test_parse_timeout():
    assert control_args.parse_timeout("60s") == 60 and control_args.parse_timeout("0") == 0
    assert control_args.parse_timeout("1m30s") == 90 and control_args.parse_timeout("500ms") == 0.5 and control_args.parse_timeout("2.5") == 2.5
    for bad in ("", "-1", "10x", "s", "1.2.3s"):
        with pytest.raises(argparse.ArgumentTypeError):
            control_args.parse_timeout(bad)


def test_every_verb_has_help_and_examples():
    parser = argparse.ArgumentParser(prog="qasup")
    sub = parser.add_subparsers(dest="verb")
    control_args.register(sub)
    assert set(sub.choices) == set(control_args.VERBS)
    for name, p in sub.choices.items():
        assert "examples:" in p.format_help() and f"qasup {name}" in p.format_help(), name


def test_ctl_imports_only_the_standard_library():
    heavy = ("anyio", "h11", "httpx", "asyncio", "http.client", "email", "ssl", "socket", "selectors", "typing")
    code = f"import sys; import supervisor.cli.control_verbs; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_parse_timeout_messages():
    for text, message in (("", "empty timeout"), ("  ", "empty timeout"), ("-1", "'-1': a timeout cannot be negative"),
                          ("nan", "'nan': a timeout cannot be negative"),
                          ("10x", "'10x' is not a duration such as 60s, 500ms, 5m or 1h"),
                          ("1m 30s", "'1m 30s' is not a duration such as 60s, 500ms, 5m or 1h")):
        with pytest.raises(argparse.ArgumentTypeError) as info:
            control_args.parse_timeout(text)
        assert str(info.value) == message, text
    assert control_args.parse_timeout(" 5 ") == 5 and control_args.parse_timeout("1h1m1s") == 3661 and control_args.parse_timeout("1e3") == 1000
