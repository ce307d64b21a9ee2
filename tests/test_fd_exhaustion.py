"""The control API keeps answering when the daemon is out of file descriptors (supervisor.control.spare).

A real daemon under ``ulimit -n 64``: idle clients holding every descriptor are shed, longest idle first, and
``qasup status`` gets its table; streams holding them are never shed, and status gets a quick 503 (exit 4)
instead of silence. In process: with nothing to free (the reserve descriptor lost too), the accept loop backs
off without spinning and serves again once descriptors come back. The daemon's CPU is read from /proc.
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import subprocess
import time
from pathlib import Path

from test_api import make_controller, portal, short_dir, start_server  # noqa: F401  (fixtures)
from test_api import refused as api_refused
from test_api_hardening import dechunk, read_head, status_of

from supervisor.control import client

from enginehelp import PY, Up, poll, stack, up  # noqa: F401  (fixtures)

LIMIT = 64
BAD_OUTPUT = ("Traceback", "ExceptionGroup", "internal error")


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid``, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def held_connections(pid: int, path: Path) -> int:
    """How many connections to the socket at ``path`` the daemon has accepted and holds (its descriptors whose
    socket /proc/net/unix names with that path, connected)."""
    ours = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[5] == "03" and fields[7] == str(path):
            ours.add(fields[6])
    held = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        held += link.startswith("socket:[") and link[8:-1] in ours
    return held


def start_limited(stack, up, units: dict[str, list[str]]) -> tuple[Up, Path]:  # noqa: F811
    for name, command in units.items():
        stack.unit(name, command=command)
    u = up().start("--no-echo", wrap=["sh", "-c", f'ulimit -n {LIMIT} && exec "$@"', "sh"])
    sock = u.state_dir / "qasup.sock"

    def ready() -> bool:
        try:
            code, doc = client.request(sock, "GET", "/v1/status", timeout=2)
        except (client.NoDaemon, client.Overloaded):
            return False
        return code == 200 and all(s["state"] == "ready" for s in doc["services"])

    poll(ready, 15, lambda: f"the stack to be ready; output:\n{u.out}")
    return u, sock


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def ask(path: Path, target: str) -> tuple[socket.socket, bytes]:
    """Connect, send ``GET target`` and read the answer's head."""
    s = connect(path)
    try:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: q\r\n\r\n".encode())
    except BrokenPipeError:
        pass   # answered 503 (out of descriptors) and closed before the request came: the answer is there
    return s, read_head(s)


def cli_status(root: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "QASUP_SOCKET"} | {"NO_COLOR": "1"}
    started = time.monotonic()
    r = subprocess.run([PY, "-m", "supervisor", "status"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=15)
    return r, time.monotonic() - started


def closed_by_daemon(sock: socket.socket, got: bytearray) -> bool:
    """Read what ``sock`` has without waiting (into ``got``); whether the daemon has closed it."""
    while select.select([sock], [], [], 0)[0]:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return True
        if not piece:
            return True
        got += piece
    return False


def test_idle_clients_holding_every_descriptor_are_shed_and_status_answers(stack, up):  # noqa: F811
    u, sock_path = start_limited(stack, up, {"a": ["sleep", "3600"], "b": ["sleep", "3600"]})
    pid = u.proc.pid
    idle: list[socket.socket] = []
    got: list[bytearray] = []
    shed: set[int] = set()

    def settled() -> bool:   # every client accepted and held, or shed: none left in the backlog
        shed.update(i for i, s in enumerate(idle) if i not in shed and closed_by_daemon(s, got[i]))
        return held_connections(pid, sock_path) + len(shed) == len(idle)

    def progress() -> str:
        return (f"{len(idle)} idle clients held or shed ({len(shed)} shed, {held_connections(pid, sock_path)} "
                f"held, {fd_count(pid)} descriptors); output:\n{u.out}")

    more = LIMIT - fd_count(pid) + 16   # more than fit: their accept() fails with EMFILE and sheds the longest idle
    for _ in range(3):   # again while one is free (the daemon's status answer to start_limited held it a moment)
        idle += [connect(sock_path) for _ in range(more)]
        got += [bytearray() for _ in range(more)]
        poll(settled, 5, progress)
        more = LIMIT - fd_count(pid)
        if not more:
            break
    assert fd_count(pid) == LIMIT, progress()
    assert len(shed) >= 10 and shed == set(range(len(shed))), f"the longest idle go first: {sorted(shed)}"
    first = bytes(got[0])
    assert status_of(first) == 503, first
    assert "out of file descriptors (EMFILE, limit 64): closed this idle connection; try again" in \
        json.loads(first.split(b"\r\n\r\n", 1)[1])["error"]
    assert "api: out of file descriptors (EMFILE, limit 64): closed the longest idle connection" in u.out

    before = cpu_ticks(pid)
    time.sleep(0.5)   # not synchronisation: the window in which the exhausted daemon must stay idle
    spent = cpu_ticks(pid) - before
    assert spent <= 3, f"{spent} CPU ticks in 0.5 s with every descriptor held by idle clients"

    r, took = cli_status(u.root)
    print(f"{len(shed)} of {len(idle)} idle clients shed; {spent} CPU ticks in 0.5 s exhausted; status {took:.2f} s")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr, u.out)
    assert took < 5, took
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[2:] if line.strip()}
    assert rows == {"a": "ready", "b": "ready"}, r.stdout
    oldest_left = len(shed)   # status's connection took the place of the longest idle one left
    poll(lambda: closed_by_daemon(idle[oldest_left], got[oldest_left]), 2, "the next longest idle to be shed")
    assert not closed_by_daemon(idle[-1], got[-1]), "the youngest idle client is kept"

    for s in idle:
        s.close()
    poll(lambda: held_connections(pid, sock_path) == 0, 5, "the daemon to close the clients' connections")
    assert client.request(sock_path, "GET", "/v1/status", timeout=5)[0] == 200
    counts = api_refused(sock_path)   # /metrics counts what was shed
    assert counts["idle_shed"] >= len(shed) + 1 and counts["out_of_fds_reserve"] == 0, counts
    assert u.stop() == 0, u.out
    assert not any(b in u.out for b in BAD_OUTPUT), u.out


def test_streams_holding_every_descriptor_are_kept_and_status_gets_a_quick_503(stack, up):  # noqa: F811
    u, sock_path = start_limited(stack, up, {
        "tick": ["sh", "-c", "while :; do echo tick; sleep 0.1; done"], "b": ["sleep", "3600"]})
    pid = u.proc.pid
    followers: list[socket.socket] = []
    events: list[socket.socket] = []
    try:
        for _ in range(8):   # each holds three descriptors: its socket, the log file, an inotify
            s, head = ask(sock_path, "/v1/services/tick/logs?n=0&follow=1")
            followers.append(s)
            assert status_of(head) == 200
        refused = b""
        for _ in range(LIMIT):   # event streams (one descriptor each) until the daemon has none left
            s, head = ask(sock_path, "/v1/events")
            if status_of(head) != 200:
                refused = head + s.recv(65536)
                s.close()
                break
            events.append(s)
        assert status_of(refused) == 503, refused
        assert json.loads(refused.split(b"\r\n\r\n", 1)[1]) == {
            "error": "the qasup daemon is out of file descriptors (EMFILE, limit 64); try again"}
        # the 503 is written before the daemon closes that connection and opens its reserve again: all 64 once
        # it has (read from another process, the moment in between can be seen)
        poll(lambda: fd_count(pid) == LIMIT, 2, lambda: f"{fd_count(pid)} descriptors open, not {LIMIT}")
        assert len(followers) + len(events) < 32, "the stream slots must not be what refused"

        before = cpu_ticks(pid)
        r, took = cli_status(u.root)   # retried for 2 s, every try answered 503 on the reserve
        spent = cpu_ticks(pid) - before
        assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
        assert "out of file descriptors (EMFILE, limit 64); try again" in r.stderr, r.stderr
        assert took < 5, took
        assert spent < 50, f"{spent} CPU ticks while status was answered 503 for {took:.1f} s"
        assert "answered a new connection 503 (busy) on the reserve descriptor" in u.out
        print(f"{len(followers)} followers + {len(events)} event streams; status exit 4 after {took:.2f} s, "
              f"{spent} daemon CPU ticks meanwhile")

        for s in followers:   # every stream is still there, and the log ones still flow: a line after these
            assert not closed_by_daemon(s, bytearray()), "a log follower was closed"
            raw = b""
            while b"tick\n" not in dechunk(raw)[0]:
                piece = s.recv(65536)
                assert piece, "a log follower was closed"
                raw += piece
        for s in events:
            assert not closed_by_daemon(s, bytearray()), "an event stream was closed"
    finally:
        for s in followers + events:
            s.close()

    def answers() -> bool:
        try:
            return client.request(sock_path, "GET", "/v1/status", timeout=2)[0] == 200
        except client.Overloaded:
            return False

    poll(answers, 5, lambda: f"status to answer once the streams are gone; output:\n{u.out}")
    counts = api_refused(sock_path)   # status's tries, answered on the reserve
    assert counts["out_of_fds_reserve"] >= 2 and counts["idle_shed"] == 0, counts
    assert u.stop() == 0, u.out
    assert not any(b in u.out for b in BAD_OUTPUT), u.out


def dev_null_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == os.devnull:
                found.add(int(name))
        except OSError:
            pass
    return found


def test_with_nothing_to_free_it_backs_off_without_spinning_then_serves(start_server):  # noqa: F811
    before = dev_null_fds()
    server = start_server()
    reserve = dev_null_fds() - before
    assert len(reserve) == 1, "serve() holds one reserve descriptor"
    pending = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)   # made now: none can be made below
    pending.settimeout(5)
    probe = os.dup(0)
    os.close(probe)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        # every descriptor from the lowest free one (or the reserve's, once closed) up is over the limit:
        # closing the reserve frees nothing accept() could use, and the reserve cannot be opened again
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(probe, *reserve), hard))
        pending.connect(str(server.socket_path))
        pending.sendall(b"GET /v1/status HTTP/1.1\r\nHost: q\r\n\r\n")
        poll(lambda: any("cannot accept a connection: out of file descriptors (EMFILE" in m for m in server.logs),
             5, lambda: str(server.logs))
        cpu = sum(os.times()[:2])   # this process's (no descriptor needed to read it, unlike /proc)
        time.sleep(0.6)   # not synchronisation: the window in which the back-off must not spin
        spent = sum(os.times()[:2]) - cpu
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"{spent * 1000:.0f} ms of CPU in 0.6 s with nothing to free")
    assert spent <= 0.05, f"{spent:.3f} s of CPU in 0.6 s of accept() failing with nothing to free"
    answer = pending.recv(65536)   # the back-off ends within 1 s: then it is served as usual
    pending.close()
    assert status_of(answer) == 200, answer[:200]
    poll(lambda: len(dev_null_fds() - before) == 1, 2, "the reserve descriptor to be opened again")
