"""The control API under hostile or unlucky use (issue 11): memory stays bounded for streaming clients that stop
reading, deeply nested JSON is a 400, an overloaded daemon is exit 4 after a short retry, and a service action
that never finishes is a 504 rather than a connection slot held for good.

The stream buffer (supervisor.control.streams) is tested on its own; the rest drives serve() over a real Unix
socket with the in-memory controller of fakecontrol.py, and one test runs a real ``qasup up`` whose service
prints 50 MB at eight ``logs -f`` clients that never read, reading the daemon's memory from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.from_thread
import pytest
from test_api import refused

from supervisor.cli import control_args
from supervisor.cli import control_verbs as ctl
from supervisor.control import client
from supervisor.control.http import MAX_JSON_DEPTH, Limits, json_too_deep
from supervisor.control.server import serve
from supervisor.control.streams import StreamBuffer, StreamPool

from fakecontrol import FakeController

KIB = 1024
MIB = 1024 * 1024


# --------------------------------------------------------------------------- the stream buffer


def _marker(skipped: int, pieces: int) -> bytes:
    return b"[skipped %d bytes, %d pieces]\n" % (skipped, pieces)


async def _drain(buffer: StreamBuffer) -> bytes:
    out = bytearray()
    buffer.finish()
    while piece := await buffer.take(64 * KIB):
        out += piece
        buffer.release(len(piece))
    return bytes(out)


def test_a_reader_that_keeps_up_gets_everything():
    async def main() -> None:
        pool = StreamPool(8 * MIB)
        buffer = StreamBuffer(pool, 256 * KIB, _marker)
        sent = bytearray()
        for i in range(2000):
            line = b"line %06d %s\n" % (i, b"x" * 200)
            buffer.put(line)
            sent += line
            if i % 100 == 99:  # the pump gets its turn now and then
                while buffer.held:
                    piece = await buffer.take(64 * KIB)
                    assert piece
                    buffer.release(len(piece))
        buffer.put(b"one big read " + b"y" * (MIB - 14) + b"\n")  # bigger than the budget, but nothing queued
        rest = await _drain(buffer)
        assert rest.endswith(b"y\n") and b"skipped" not in rest
        assert buffer.skipped_total == 0 and pool.held == 0

    anyio.run(main)


def test_a_stalled_reader_skips_ahead_with_a_marker_and_whole_lines():
    async def main() -> None:
        pool = StreamPool(8 * MIB)
        buffer = StreamBuffer(pool, 256 * KIB, _marker)
        data = b"".join(b"line %06d %s\n" % (i, b"x" * 90) for i in range(60_000))  # 6 MB
        chunks = [data[start:start + 7919] for start in range(0, len(data), 7919)]  # chunks end mid-line
        for chunk in chunks[:-100]:  # the reader is stalled
            buffer.put(chunk)
            assert buffer.held <= 256 * KIB and pool.held == buffer.held
        out = bytearray()
        while buffer.held:  # it reads again and catches up
            piece = await buffer.take(64 * KIB)
            out += piece
            buffer.release(len(piece))
        for chunk in chunks[-100:]:  # and keeps up
            buffer.put(chunk)
            while buffer.held:
                piece = await buffer.take(64 * KIB)
                out += piece
                buffer.release(len(piece))
        out += await _drain(buffer)
        assert pool.held == 0
        found = re.search(rb"\n?\[skipped (\d+) bytes, \d+ pieces\]\n", out)
        assert found, out[-300:]
        before, after = bytes(out[: found.start()]), bytes(out[found.end():])
        assert data.startswith(before)   # what was sent before the skip is the log's start
        assert data.endswith(after)      # and after it the log's end
        assert after.startswith(b"line ") and len(after) > 600_000  # resumed at a line start, without loss since
        assert len(before) + int(found.group(1)) + len(after) == len(data)
        assert buffer.skipped_total == int(found.group(1)) > 5_000_000
        assert out.count(b"skipped") == 1

    anyio.run(main)


def test_the_marker_comes_once_the_reader_catches_up_even_when_the_producer_is_quiet():
    async def main() -> None:
        pool = StreamPool(8 * MIB)
        buffer = StreamBuffer(pool, 1000, _marker)
        for i in range(100):
            buffer.put(b'{"event": %d}\n' % i)  # one piece = one event, always a whole line
        out = bytearray()
        while b"skipped" not in out:
            with anyio.fail_after(2):
                piece = await buffer.take(64)
            out += piece
            buffer.release(len(piece))
        assert out.endswith(b"pieces]\n")
        lines = bytes(out).splitlines()
        assert all(line.startswith(b'{"event": ') for line in lines[:-1])
        skipped = int(lines[-1].split()[-2])
        assert len(lines) - 1 + skipped == 100

    anyio.run(main)


def test_the_pool_caps_all_streams_together_and_close_gives_bytes_back():
    async def main() -> None:
        pool = StreamPool(1 * MIB)
        buffers = [StreamBuffer(pool, 256 * KIB, _marker) for _ in range(8)]
        for _ in range(200):  # 200 KB for each: within its own budget, 1.6 MB together
            for buffer in buffers:
                buffer.put(b"z" * 1000 + b"\n")
        assert pool.held <= 1 * MIB
        assert sum(b.held for b in buffers) == pool.held
        assert sum(b.skipped_total for b in buffers) > 0
        for buffer in buffers:
            buffer.close()
        assert pool.held == 0

    anyio.run(main)


# --------------------------------------------------------------------------- an in-process server


def make_controller(log_dir: Path) -> FakeController:
    return FakeController(log_dir, {
        "sanic": {"state": "ready", "pid": 812, "restarts": 0, "uptime_s": 3.2, "ready_after_s": 1.9},
        "base": {"state": "starting", "pid": 813, "restarts": 0, "uptime_s": 0.5, "ready_after_s": None},
    })


class Server:
    def __init__(self, portal: anyio.from_thread.BlockingPortal, path: Path, log_dir: Path, limits: Limits) -> None:
        self.portal = portal
        self.socket_path = path
        self.controller = make_controller(log_dir)
        self.logs: list[str] = []
        self.finished = threading.Event()
        self.scope: anyio.CancelScope | None = None
        self.limits = limits
        portal.start_task(self._run)

    async def _run(self, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with anyio.CancelScope() as self.scope:
                await serve(self.controller, self.socket_path, log=self.logs.append, limits=self.limits,
                            task_status=task_status)
        finally:
            self.finished.set()

    def stop(self) -> None:
        if not self.finished.is_set():
            assert self.scope is not None
            self.portal.call(self.scope.cancel)
            assert self.finished.wait(5)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qh", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_server(short_dir):
    with anyio.from_thread.start_blocking_portal() as portal:
        servers: list[Server] = []

        def start(limits: Limits = Limits(request_timeout=2.0)) -> Server:
            server = Server(portal, short_dir / f"s{len(servers)}.sock", short_dir, limits)
            servers.append(server)
            return server

        yield start
        for server in servers:
            server.stop()


def connect(path: Path, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def exchange(path: Path, data: bytes) -> bytes:
    with connect(path) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (a 503) and closed before the request was read: the answer is still to be read
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass  # a 503 is written without reading the request: the unread request resets the connection after it
    return out


def post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: q\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response.split(b" ", 2)[1])


def error_of(response: bytes) -> str:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]


def run_cli(socket_path: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="qasup")
    parser.add_argument("--socket")
    control_args.register(parser.add_subparsers(dest="verb"))
    return ctl.run(parser.parse_args(["--socket", str(socket_path), *argv]))


def poll(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- deep JSON


@pytest.mark.parametrize("body", [b"[" * 30_000, b"{" * 30_000, b'{"a":' * 12_000, b"[" * 30_000 + b"]" * 30_000,
                                  b'{"with_dependents": ' + b"[" * 33 + b"]" * 33 + b"}"])
def test_deeply_nested_json_is_a_400_not_a_crash(start_server, body):
    server = start_server()
    response = exchange(server.socket_path, post("/v1/services/sanic/restart", body))
    assert status_of(response) == 400
    assert f"deeper than {MAX_JSON_DEPTH} levels" in error_of(response)
    assert not any("internal error" in line or "Recursion" in line for line in server.logs), server.logs
    assert server.controller.calls == []
    assert client.request(server.socket_path, "GET", "/v1/status")[0] == 200


def test_json_depth_ignores_brackets_in_strings():
    assert not json_too_deep(b'{"with_dependents": true, "x": "' + b"[{" * 1000 + b'"}')
    assert not json_too_deep(b'{"a": "\\"' + b"[" * 100 + b'"}')        # an escaped quote stays in the string
    assert json_too_deep(b'{"a": "\\\\", "b": ' + b"[" * 40 + b"]" * 40 + b"}")  # an escaped backslash does not
    assert not json_too_deep(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert json_too_deep(b"[" * (MAX_JSON_DEPTH + 1))


def test_nested_but_shallow_body_still_gets_the_usual_answer(start_server):
    server = start_server()
    response = exchange(server.socket_path, post("/v1/services/sanic/restart", b'{"with_dependents": [[true]]}'))
    assert status_of(response) == 400 and "true or false" in error_of(response)


# --------------------------------------------------------------------------- overloaded: retry, then exit 4


def test_status_against_full_connection_slots_retries_then_exits_4(start_server, capsys, monkeypatch):
    server = start_server(Limits(request_timeout=30.0, max_connections=2))
    holders = [connect(server.socket_path) for _ in range(2)]  # connected, never send: both slots taken
    try:
        poll(lambda: exchange(server.socket_path, b"GET /v1/status HTTP/1.1\r\nHost: q\r\n\r\n")
             .startswith(b"HTTP/1.1 503"), 5, "the slots to be full")
        for argv in (["status"], ["restart", "sanic"], ["logs", "sanic", "-f"], ["events"]):
            started = time.monotonic()
            assert run_cli(server.socket_path, *argv) == 4, argv
            took = time.monotonic() - started
            assert client.BUSY_RETRY_S <= took < client.BUSY_RETRY_S + 2, (argv, took)
            err = capsys.readouterr().err
            assert "overloaded" in err and "too many connections" in err and str(server.socket_path) in err
            monkeypatch.setattr(client, "BUSY_RETRY_S", 0.3)  # the same for the other verbs, in less time
        assert ("restart", "sanic", False) not in server.controller.calls
        # a slot that frees up within the retry window: the verb succeeds
        monkeypatch.setattr(client, "BUSY_RETRY_S", 2.0)
        threading.Timer(0.4, holders.pop().close).start()
        assert run_cli(server.socket_path, "status") == 3  # base is starting: not all ready
        assert "base" in capsys.readouterr().out
    finally:
        for sock in holders:
            sock.close()
    counts = refused(server.socket_path)   # every try of those verbs was one connection over the cap
    assert counts["connection_limit"] >= 5 and counts["stream_limit"] == counts["idle_shed"] == 0, counts


def test_wait_ready_keeps_polling_an_overloaded_daemon(start_server, capsys):
    server = start_server(Limits(request_timeout=30.0, max_connections=1))
    holder = connect(server.socket_path)
    try:
        poll(lambda: exchange(server.socket_path, b"GET /v1/status HTTP/1.1\r\nHost: q\r\n\r\n")
             .startswith(b"HTTP/1.1 503"), 5, "the slot to be full")
        assert run_cli(server.socket_path, "wait-ready", "sanic", "--timeout", "1s") == 1
        assert "overloaded" in capsys.readouterr().err
        threading.Timer(0.3, holder.close).start()
        assert run_cli(server.socket_path, "wait-ready", "sanic", "--timeout", "10s") == 0
    finally:
        holder.close()


# --------------------------------------------------------------------------- the action deadline


def test_an_action_that_never_finishes_gets_504_and_frees_its_slot(start_server, capsys):
    server = start_server(Limits(request_timeout=2.0, max_connections=1, action_deadline=0.5))

    async def restart_forever(name: str, with_dependents: bool = False) -> dict:
        server.controller.calls.append(("restart", name, with_dependents))
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    server.controller.restart = restart_forever
    started = time.monotonic()
    status, payload = client.request(server.socket_path, "POST", "/v1/services/base/restart", timeout=None)
    assert 0.45 < time.monotonic() - started < 3
    assert status == 504
    assert "restart base: no answer within 0.5s" in payload["error"] and "qasup status base" in payload["error"]
    # max_connections=1: the slot is free again, and other requests are answered
    assert client.request(server.socket_path, "GET", "/v1/status", timeout=2)[0] == 200
    assert run_cli(server.socket_path, "restart", "base") == 1
    assert "no answer within 0.5s" in capsys.readouterr().err
    assert run_cli(server.socket_path, "stop", "base") == 0


# --------------------------------------------------------------------------- streams in-process


def read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(1)
        assert piece, head
        head += piece
    return head


def dechunk(data: bytes) -> tuple[bytes, bytes]:
    """(the body of the complete chunks in ``data``, what is left)."""
    body = bytearray()
    while True:
        end = data.find(b"\r\n")
        if end < 0:
            return bytes(body), data
        size = int(data[:end].split(b";")[0], 16)
        if len(data) < end + 2 + size + 2:
            return bytes(body), data
        body += data[end + 2: end + 2 + size]
        data = data[end + 2 + size + 2:]
        if size == 0:
            return bytes(body), data


def test_events_reader_that_stalls_skips_ahead_and_sees_a_marker(start_server):
    server = start_server(Limits(request_timeout=2.0, stream_buffer_bytes=64 * KIB))
    sock = connect(server.socket_path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: q\r\n\r\n")
    assert status_of(read_head(sock)) == 200
    poll(lambda: server.controller.subscribers, 5, "the subscription")

    async def publish(total: int) -> None:
        (subscriber,) = server.controller.subscribers
        for i in range(total):  # waits while the subscription's own queue is full, like a busy engine
            await subscriber.send({"service": "sanic", "state": "ready", "n": i, "pad": "p" * 400})

    total = 20_000  # about 9 MB of events, far more than the socket buffers
    server.portal.call(publish, total)
    server.portal.call(server.controller.end_events)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    body, _ = dechunk(raw)
    events = [json.loads(line) for line in body.splitlines()]
    markers = [e for e in events if "skipped_events" in e]
    assert markers and all("fell more than 64 KiB behind" in m["message"] for m in markers)
    delivered = [e["n"] for e in events if "n" in e]
    assert delivered == sorted(delivered) and len(delivered) < total
    assert len(delivered) + sum(m["skipped_events"] for m in markers) == total
    assert any("events reader read too slowly" in line for line in server.logs)


def test_new_streams_get_503_once_the_streams_hold_the_cap(start_server):
    server = start_server(Limits(request_timeout=2.0, stream_buffer_bytes=64 * KIB, streams_buffer_bytes=96 * KIB))
    log = server.controller.log_dir / "sanic.log"
    log.write_bytes(b"")
    first = connect(server.socket_path)
    first.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    first.sendall(b"GET /v1/services/sanic/logs?n=0&follow=1 HTTP/1.1\r\nHost: q\r\n\r\n")
    assert status_of(read_head(first)) == 200
    second = b""

    def refused() -> bool:
        nonlocal second
        with log.open("ab") as f:  # more for the first stream, which nobody reads: its queue fills up
            f.write((b"w" * 999 + b"\n") * 5)
        second = exchange(server.socket_path, b"GET /v1/events HTTP/1.1\r\nHost: q\r\n\r\n")
        return second.startswith(b"HTTP/1.1 503")

    poll(refused, 10, "a 503 for a new stream")
    assert "try again" in error_of(second) and "slow readers" in error_of(second)
    assert client.request(server.socket_path, "GET", "/v1/status")[0] == 200  # plain requests still served
    first.close()


# --------------------------------------------------------------------------- a real daemon, 50 MB, 8 stalled followers


PY = sys.executable
LINE = "qasup-loud-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789-abcdefghijklmnopqrstuvwxyz"
TOTAL = 50_000_000


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_stalled_log_followers_keep_the_daemon_small_and_responsive(tmp_path):
    root = tmp_path
    go = root / "go"
    (root / "services.d").mkdir()
    (root / "services.d" / "loud.toml").write_text(textwrap.dedent(f"""
        command = ["sh", "-c", "while [ ! -e {go} ]; do sleep 0.02; done; yes {LINE} | head -c {TOTAL}; echo; echo LOUD-DONE; while :; do echo tick; sleep 0.1; done"]
        [log]
        max_bytes = "1GiB"
        """))
    (root / "qasup.toml").write_text('[stack]\nname = "loud"\n')
    env = {**os.environ, "QASUP_GPUS": "none", "NO_COLOR": "1"}
    env.pop("QASUP_SOCKET", None)
    out = open(root / "up.out", "wb")
    proc = subprocess.Popen([PY, "-m", "supervisor", "up", "--no-echo"], cwd=root, stdout=out,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    sock_path = root / ".qasup" / "qasup.sock"
    followers: list[socket.socket] = []
    try:
        def ready() -> bool:
            try:
                status, payload = client.request(sock_path, "GET", "/v1/status", timeout=2)
            except client.NoDaemon:
                return False
            return status == 200 and payload["services"][0]["state"] == "ready"

        poll(ready, 20, "loud to be ready")
        rss_start = vm_rss(proc.pid)
        for _ in range(8):
            sock = connect(sock_path, timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /v1/services/loud/logs?n=0&follow=1 HTTP/1.1\r\nHost: q\r\n\r\n")
            assert status_of(read_head(sock)) == 200
            followers.append(sock)
        time.sleep(0.2)  # not synchronisation: lets the followers open the log before the burst (else they start later)
        go.touch()
        log = root / "logs" / "loud.log"
        rss_max, slowest = rss_start, 0.0
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the burst did not end in time"
            rss_max = max(rss_max, vm_rss(proc.pid))
            started = time.monotonic()
            assert run_cli(sock_path, "status") == 0
            slowest = max(slowest, time.monotonic() - started)
            if log.exists() and log.stat().st_size > TOTAL and b"tick" in log.read_bytes()[-200:]:
                break
            time.sleep(0.05)
        # one follower reads again: what it missed is reported by a marker, then whole lines follow
        resumer = followers.pop()
        raw = b""
        body = b""
        read_until = time.monotonic() + 20
        while not re.search(rb"\[qasup\] skipped \d+ bytes[^\n]*\n(?:[^\n]*\n)*tick\n", body):
            assert time.monotonic() < read_until, body[-500:]
            rss_max = max(rss_max, vm_rss(proc.pid))
            raw += resumer.recv(1 << 20)
            body, _ = dechunk(raw)
        for _ in range(10):  # the other followers have seen the whole burst by now too; measure a little more
            rss_max = max(rss_max, vm_rss(proc.pid))
            time.sleep(0.05)
        found = re.search(rb"\n?\[qasup\] skipped (\d+) bytes of loud's log here: this reader fell more than "
                          rb"256 KiB behind \(the log file still has them\)\n", body)
        assert found, body[-500:]
        before, after = body[: found.start()], body[found.end():]
        assert int(found.group(1)) > TOTAL * 0.9
        assert (LINE.encode() + b"\n").startswith(before.split(b"\n")[-1])  # at most one cut line before it
        # after it whole lines only (the burst's last line is cut by head -c itself)
        assert all(LINE.encode().startswith(line) or line in (b"LOUD-DONE", b"tick")
                   for line in after.split(b"\n")[:-1]), after[:300]
        print(f"daemon VmRSS {rss_start / MIB:.1f} MiB at start, at most +{(rss_max - rss_start) / MIB:.1f} MiB; "
              f"slowest status {slowest * 1000:.0f} ms")
        assert rss_max - rss_start < 60 * MIB, (rss_start, rss_max)
        assert slowest < 1.0, slowest
    finally:
        for sock in followers:
            sock.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        out.close()
