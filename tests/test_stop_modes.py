"""``[stop] mode`` (``group``: everyone gets the stop signal at once; ``main``: the main process first, the rest
once it has exited, SIGKILL for all at ``[stop] timeout``) and the full ``[stop] timeout`` for leftovers.

Real prefork servers, real signals, real sockets: a request in flight must survive ``qasup stop`` with
``mode = "main"`` and is lost with ``group``; leftovers that need 3 s within a 4 s timeout are not killed;
with a 1 s timeout they are, at about 1 s.
"""

from __future__ import annotations

import socket
import subprocess
import time

from enginehelp import PY, alive, poll, stack, up  # noqa: F401  (fixtures)

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


def test_request_in_flight_survives_stop_in_main_mode_only(stack, up, tmp_path):
    prog = tmp_path / "prefork.py"
    prog.write_text(PREFORK)
    for mode in ("main", "group"):
        stack.unit(mode, command=[PY, str(prog), str(tmp_path / f"{mode}.port")],
                   ready={"log": "^serving$", "timeout": "20s"}, stop={"mode": mode, "timeout": "10s"})
    u = up().start()
    conns = {}
    for mode in ("main", "group"):
        u.wait_state(mode, "ready", 20)
        conns[mode] = socket.create_connection(("127.0.0.1", int((tmp_path / f"{mode}.port").read_text())),
                                               timeout=15)
        conns[mode].sendall(b"GET /\n")
        poll(lambda mode=mode: b"working" in u.log(mode), 10, "a worker at work on the request")
    t0 = time.monotonic()
    stopper = qasup_stop(tmp_path, "main", "group")
    answers = {}
    for mode, conn in conns.items():
        with conn:
            try:
                answers[mode] = conn.makefile("rb").readline()
            except ConnectionResetError:
                answers[mode] = b""
    out, _ = stopper.communicate(timeout=30)
    took = time.monotonic() - t0
    assert stopper.returncode == 0, out
    main, group = u.log("main"), u.log("group")
    assert answers["main"] == b"done\n", "the worker finished the request in flight while the master drained"
    assert b"drained: 2 workers alive" in main, "the workers got no signal while the master drained"
    assert main.index(b"master draining") < main.index(b"answered")
    assert answers["group"] == b"", "SIGTERM reached the worker at once: the request was lost"
    assert b"master draining" in group and b"drained: 0 workers alive" in group and b"answered" not in group
    assert took >= 1.0, "the master drained for its second in both modes"
    assert {s: u.service_status(s)["state"] for s in ("main", "group")} == {"main": "stopped", "group": "stopped"}
    assert u.stop() == 0
    assert u.leftovers() == []


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


def test_leftovers_get_the_full_stop_timeout(stack, up, tmp_path):
    # main mode: the main process gets SIGTERM and dies; then the child gets it and needs 3 s of its 4
    report = _linger(stack, tmp_path, "main", 3.0, "4s")
    u = up().start()
    u.wait_state("svc", "ready", 20)
    kid = child_pid(report)
    t0 = time.monotonic()
    stopper = qasup_stop(tmp_path, "svc")
    out, _ = stopper.communicate(timeout=30)
    took = time.monotonic() - t0
    assert stopper.returncode == 0, out
    assert "clean exit" in report.read_text(), "not SIGKILLed before its [stop] timeout"
    assert 2.9 <= took < 8, took
    assert not alive(kid)
    assert u.stop() == 0
    assert u.leftovers() == []


def test_leftovers_are_killed_at_the_stop_timeout(stack, up, tmp_path):
    reports = {mode: _linger(stack, tmp_path, mode, 30.0, "1s", name=mode) for mode in ("main", "group")}
    u = up().start()
    kids = {}
    for mode in reports:
        u.wait_state(mode, "ready", 20)
        kids[mode] = child_pid(reports[mode])
    t0 = time.monotonic()
    stopper = qasup_stop(tmp_path, "main", "group")
    out, _ = stopper.communicate(timeout=30)
    took = time.monotonic() - t0
    assert stopper.returncode == 0, out
    for mode, report in reports.items():
        text = report.read_text()
        assert "term " in text and "clean exit" not in text, mode
        assert not alive(kids[mode]), f"{mode}: SIGKILLed at the timeout"
    assert 0.9 <= took < 4, took
    assert u.stop() == 0
    assert u.leftovers() == []


def test_leftovers_of_a_natural_exit_get_the_full_stop_timeout_too(stack, up, tmp_path):
    # the main process exits 1 by itself; its child needs 5.3 s after SIGTERM, within a 6 s timeout (qasup
    # used to give leftovers min(timeout, 5 s))
    report = _linger(stack, tmp_path, "group", 5.3, "6s", exit_after=0.0)
    u = up().start()
    kid = child_pid(report)
    u.wait_state("svc", "failed", 30)
    text = report.read_text()
    assert "clean exit" in text, "not SIGKILLed before its [stop] timeout"
    assert not alive(kid)
    assert "exited with code 1" in (u.service_status("svc")["last_error"] or "")
    assert u.stop() == 0
    assert u.leftovers() == []
