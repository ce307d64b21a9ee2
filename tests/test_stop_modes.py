"""``[stop] mode`` (``group``: everyone gets the stop signal at once; ``main``: the main process first, the rest
once it has exited, SIGKILL for all at ``[stop] timeout``) and the full ``[stop] timeout`` for leftovers.

Real prefork servers, real signals, real sockets: a request in flight must survive ``qasup stop`` with
``mode = "main"`` and is lost with ``group``; leftovers that need 3 s within a 4 s timeout are not killed;
with a 1 s timeout they are, at about 1 s.

Speed: the four cases are independent services of ONE stack (:func:`stopped`): one ``qasup up``, the three stops
at once and the natural exit meanwhile, so the module takes about as long as its longest case (the 5.3 s
leftover), not the sum. Each test asserts its own case on what was recorded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from enginehelp import PY, Stack, Up, alive, poll

# A prefork server (Sanic/gunicorn style): the master listens, two forked workers accept. A worker's request
# is in flight until the master starts draining (it tells the workers through a pipe), then takes 0.2 s more.
# The master traps SIGTERM, drains for 1 s, says how many workers were still alive, then stops them. The
# workers keep the default SIGTERM action: one that gets it dies at once, with its request.
PREFORK = r'''
import os, select, signal, socket, sys, time
lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(8)
r, w = os.pipe()
workers = []
for i in range(2):
    pid = os.fork()
    if pid == 0:
        while True:
            conn, _ = lsock.accept()
            conn.recv(100)
            print(f"worker {os.getpid()} working", flush=True)
            select.select([r], [], [])
            time.sleep(0.2)
            conn.sendall(b"done\n")
            conn.close()
            print(f"worker {os.getpid()} answered", flush=True)
    workers.append(pid)

def drain(sig, frame):
    print("master draining", flush=True)
    os.write(w, b"x")
    time.sleep(1.0)
    alive = sum(1 for p in workers if os.waitpid(p, os.WNOHANG) == (0, 0))
    print(f"drained: {alive} workers alive", flush=True)
    for p in workers:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    os._exit(0)

signal.signal(signal.SIGTERM, drain)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(lsock.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("serving", flush=True)
while True:
    signal.pause()
'''

# A main process that dies on SIGTERM at once, with a child that traps it and needs LINGER seconds to end
# (it writes its progress to a file: its output is closed, so the pipe's EOF does not wait for it).
LINGER = r'''
import os, signal, sys, time
report, linger, exit_after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
if os.fork() == 0:
    os.setsid()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1); os.dup2(devnull, 2)
    def term(sig, frame):
        with open(report, "a") as f:
            f.write(f"term {time.monotonic()}\n")
        time.sleep(linger)
        with open(report, "a") as f:
            f.write("clean exit\n")
        os._exit(0)
    signal.signal(signal.SIGTERM, term)
    with open(report, "a") as f:
        f.write(f"child {os.getpid()}\n")
    while True:
        signal.pause()
while not os.path.exists(report):
    time.sleep(0.01)
print("up", flush=True)
if exit_after >= 0:
    time.sleep(exit_after)
    sys.exit(1)
while True:
    signal.pause()
'''


def qasup_stop(root, *names: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "supervisor", "stop", *names], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _linger(stack, tmp_path, mode: str, linger: float, timeout: str, exit_after: float = -1.0,
            name: str = "svc"):
    prog = tmp_path / "linger.py"
    prog.write_text(LINGER)
    report = tmp_path / f"{name}.report"
    stack.unit(name, command=[PY, str(prog), str(report), str(linger), str(exit_after)],
               ready={"log": "^up$", "timeout": "20s"}, stop={"mode": mode, "timeout": timeout},
               restart={"policy": "never"})
    return report


def child_pid(report) -> int:
    def find():
        text = report.read_text() if report.exists() else ""
        return next((x for x in text.splitlines() if x.startswith("child ")), None)

    line = poll(find, 10, "the child's pid")
    return int(line.split()[1])


class Stopper(threading.Thread):
    """``qasup stop NAMES`` from now: its output, exit code and how long it took (``run`` in a thread)."""

    def __init__(self, root: Path, *names: str) -> None:
        super().__init__(daemon=True)
        self.t0 = time.monotonic()
        self.proc = qasup_stop(root, *names)
        self.out = ""
        self.took = -1.0

    def run(self) -> None:
        try:
            self.out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out = (self.proc.communicate()[0] or "") + "\n(qasup stop still running after 30 s: killed)"
        self.took = time.monotonic() - self.t0

    def result(self) -> tuple[int | None, str, float]:
        self.join(35)
        return self.proc.returncode, self.out, self.took


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One stack with every case's services, started once; the stops run at once. What each test asserts on.

    * ``main``, ``group``: the prefork server with a request in flight, stopped together (``prefork`` stopper);
    * ``full``: main mode, a leftover that needs 3 s of its 4 s ``[stop] timeout`` (``full`` stopper);
    * ``kill-main``, ``kill-group``: a leftover that needs 30 s, a 1 s timeout (``kill`` stopper);
    * ``natural``: group mode, the main process exits 1 by itself, its leftover needs 5.3 s of its 6 s.
    """
    tmp_path = tmp_path_factory.mktemp("stop-modes")
    stack = Stack(tmp_path)
    prog = tmp_path / "prefork.py"
    prog.write_text(PREFORK)
    for mode in ("main", "group"):
        stack.unit(mode, command=[PY, str(prog), str(tmp_path / f"{mode}.port")],
                   ready={"log": "^serving$", "timeout": "20s"}, stop={"mode": mode, "timeout": "10s"})
    reports = {"full": _linger(stack, tmp_path, "main", 3.0, "4s", name="full"),
               "natural": _linger(stack, tmp_path, "group", 5.3, "6s", exit_after=0.0, name="natural")}
    for mode in ("main", "group"):
        reports[f"kill-{mode}"] = _linger(stack, tmp_path, mode, 30.0, "1s", name=f"kill-{mode}")
    u = Up(tmp_path, "stop-modes-" + os.urandom(6).hex()).start()
    facts: dict[str, Any] = {"u": u, "reports": reports}
    try:
        kids = {name: child_pid(report) for name, report in reports.items()}
        facts["kids"] = kids
        conns = {}
        for mode in ("main", "group"):
            u.wait_state(mode, "ready", 20)
            conns[mode] = socket.create_connection(("127.0.0.1", int((tmp_path / f"{mode}.port").read_text())),
                                                   timeout=15)
            conns[mode].sendall(b"GET /\n")
            poll(lambda mode=mode: b"working" in u.log(mode), 10, "a worker at work on the request")
        for name in ("full", "kill-main", "kill-group"):
            u.wait_state(name, "ready", 20)
        stoppers = {"prefork": Stopper(tmp_path, "main", "group"), "full": Stopper(tmp_path, "full"),
                    "kill": Stopper(tmp_path, "kill-main", "kill-group")}
        for stopper in stoppers.values():
            stopper.start()
        answers = {}
        for mode, conn in conns.items():
            with conn:
                try:
                    answers[mode] = conn.makefile("rb").readline()
                except ConnectionResetError:
                    answers[mode] = b""
        facts["answers"] = answers
        facts["stops"] = {name: stopper.result() for name, stopper in stoppers.items()}
        facts["states"] = {s: u.service_status(s)["state"] for s in ("main", "group")}
        facts["kids_alive"] = {name: alive(pid) for name, pid in kids.items() if name != "natural"}
        u.wait_state("natural", "failed", 30)
        facts["natural_report"] = reports["natural"].read_text()
        facts["natural_alive"] = alive(kids["natural"])
        facts["natural_error"] = u.service_status("natural")["last_error"] or ""
        facts["stop_code"] = u.stop()
        facts["leftovers"] = u.leftovers()
        yield facts
    finally:
        left = u.cleanup()
    assert not left, "processes left behind:\n" + "\n".join(left)


def test_request_in_flight_survives_stop_in_main_mode_only(stopped):
    code, out, took = stopped["stops"]["prefork"]
    answers, u = stopped["answers"], stopped["u"]
    assert code == 0, out
    main, group = u.log("main"), u.log("group")
    assert answers["main"] == b"done\n", "the worker finished the request in flight while the master drained"
    assert b"drained: 2 workers alive" in main, "the workers got no signal while the master drained"
    assert main.index(b"master draining") < main.index(b"answered")
    assert answers["group"] == b"", "SIGTERM reached the worker at once: the request was lost"
    assert b"master draining" in group and b"drained: 0 workers alive" in group and b"answered" not in group
    assert took >= 1.0, "the master drained for its second in both modes"
    assert stopped["states"] == {"main": "stopped", "group": "stopped"}
    assert stopped["stop_code"] == 0
    assert stopped["leftovers"] == []


def test_leftovers_get_the_full_stop_timeout(stopped):
    # main mode: the main process gets SIGTERM and dies; then the child gets it and needs 3 s of its 4
    code, out, took = stopped["stops"]["full"]
    assert code == 0, out
    assert "clean exit" in stopped["reports"]["full"].read_text(), "not SIGKILLed before its [stop] timeout"
    assert 2.9 <= took < 8, took
    assert not stopped["kids_alive"]["full"]
    assert stopped["stop_code"] == 0
    assert stopped["leftovers"] == []


def test_leftovers_are_killed_at_the_stop_timeout(stopped):
    code, out, took = stopped["stops"]["kill"]
    assert code == 0, out
    for mode in ("main", "group"):
        text = stopped["reports"][f"kill-{mode}"].read_text()
        assert "term " in text and "clean exit" not in text, mode
        assert not stopped["kids_alive"][f"kill-{mode}"], f"{mode}: SIGKILLed at the timeout"
    assert 0.9 <= took < 4, took
    assert stopped["stop_code"] == 0
    assert stopped["leftovers"] == []


def test_leftovers_of_a_natural_exit_get_the_full_stop_timeout_too(stopped):
    # the main process exits 1 by itself; its child needs 5.3 s after SIGTERM, within a 6 s timeout (qasup
    # used to give leftovers min(timeout, 5 s))
    assert "clean exit" in stopped["natural_report"], "not SIGKILLed before its [stop] timeout"
    assert not stopped["natural_alive"]
    assert "exited with code 1" in stopped["natural_error"]
    assert stopped["stop_code"] == 0
    assert stopped["leftovers"] == []
