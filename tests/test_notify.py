"""sd_notify: qasup speaking to the service manager that started it (``NOTIFY_SOCKET``: READY=1 once the stack is
ready, STATUS=N/M services ready, WATCHDOG=1 every half WATCHDOG_USEC, STOPPING=1 at shutdown), with a real
datagram socket the test listens on, as systemd does."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from enginehelp import PY, free_port, poll, stack, together, together_alone, together_results, up  # noqa: F401  (fixtures)


class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.got: list[tuple[float, str]] = []

    def read(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            self.got += [(time.monotonic(), m) for m in data.decode().split("\n") if m]
        return [m for _, m in self.got]

    def close(self) -> None:
        self.sock.close()


@together
@pytest.mark.parametrize("kind", ["abstract", "file"])
def test_qasup_tells_its_manager_ready_status_watchdog_and_stopping(stack, up, tmp_path, kind) -> None:
    address = f"@qasup-test-{os.getpid()}-{time.monotonic_ns()}" if kind == "abstract" else str(tmp_path / "notify")
    lis = Listener(address)
    try:
        stack.unit("a", command=["sh", "-c", 'echo "NS=${NOTIFY_SOCKET-unset} WD=${WATCHDOG_USEC-unset}"; '
                                 "exec sleep 600"], ready={"log": "NS="})
        stack.unit("b", command=["sleep", "600"], requires=["a"])
        u = up().start(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
        poll(lambda: "READY=1" in lis.read(), 15, lambda: f"READY=1 (got {lis.read()}); output:\n{u.out}")
        msgs = lis.read()
        assert msgs.index("STATUS=2/2 services ready") < msgs.index("READY=1")
        assert "STATUS=0/2 services ready" in msgs and msgs.count("READY=1") == 1
        u.wait_out("all 2 services ready")   # qasup's stdout is written by a thread: not ordered with the socket
        assert "all 2 services ready" in u.out
        # the watchdog: every half WATCHDOG_USEC (0.1 s), for as long as qasup runs
        start = len([m for m in msgs if m == "WATCHDOG=1"])
        poll(lambda: lis.read().count("WATCHDOG=1") >= start + 4, 5, "four more WATCHDOG=1")
        # the services do not inherit qasup's notify variables (they would speak for qasup)
        assert b"NS=unset WD=unset" in u.log("a")
        u.signal(signal.SIGTERM)
        assert u.wait(20) == 0
        msgs = lis.read()
        assert "STOPPING=1" in msgs and msgs.index("STOPPING=1") > msgs.index("READY=1")
        assert msgs.count("READY=1") == 1
    finally:
        lis.close()


@together
def test_without_notify_socket_nothing_is_sent_and_a_gone_manager_is_harmless(stack, up, tmp_path) -> None:
    stack.unit("a", command=["sleep", "600"])
    # a socket path nobody listens on: sending fails, qasup runs on regardless
    u = up().start(env={"NOTIFY_SOCKET": str(tmp_path / "nobody"), "WATCHDOG_USEC": "100000"})
    u.wait_out("all 1 services ready")
    assert u.stop() == 0


def test_the_example_systemd_unit_is_valid(tmp_path) -> None:
    import sys
    from pathlib import Path

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    text = (Path(__file__).parents[1] / "examples" / "systemd" / "qasup.service").read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    qasup = Path(sys.executable).with_name("qasup")
    unit = tmp_path / "qasup.service"
    unit.write_text(text.replace("/opt/qasup/.venv/bin/qasup", str(qasup)).replace("/opt/stack", str(tmp_path)))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


# ---------------------------------------------------------------------------------------------------------------
# a service speaking sd_notify to qasup: [ready] notify = true

# A sender in Python: sends argv[1] (\n-separated fields) to the NOTIFY_SOCKET named in argv[2] (default: its
# own), with SCM_CREDENTIALS naming pid argv[3] when given (a forged sender), once the file GO exists.
SENDER = r'''
import os, socket, struct, sys, time
while not os.path.exists("GO"):
    time.sleep(0.02)
msg = sys.argv[1].replace("\\n", "\n").encode()
address = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
anc = []
if len(sys.argv) > 3:
    claimed = int(open(sys.argv[3]).read())
    anc = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", claimed, os.getuid(), os.getgid()))]
try:
    s.sendmsg([msg], anc, 0, b"\0" + address[1:].encode())
    print("sent", flush=True)
except OSError as e:
    print(f"send failed: {e.strerror}", flush=True)
time.sleep(600)
'''


@contextlib.contextmanager
def shared_folder():
    """A folder any user can read (the test's own tmp_path sits under a 0700 one): the sender, a's pid."""
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="qasup-notify-"))
    try:
        d.chmod(0o755)
        (d / "sender.py").write_text(SENDER)
        (d / "sender.py").chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


TOGETHER_FIXTURES = {"shared": shared_folder}   # for the tests that run side by side (enginehelp.together)


def _sender(folder, msg: str, address: str = "-", claim: str | None = None) -> list[str]:
    if not (folder / "sender.py").exists():
        (folder / "sender.py").write_text(SENDER)
    return ["/usr/bin/python3", str(folder / "sender.py"), msg, address, *([claim] if claim else [])]


@together
def test_ready_1_from_the_service_makes_it_ready_and_status_shows_its_words(stack, up, tmp_path) -> None:
    stack.unit("a", command=_sender(tmp_path, "STATUS=serving 3 clients\\nREADY=1"),
               ready={"notify": True, "timeout": "20s"})
    stack.unit("b", command=["sleep", "600"], requires=["a"])
    u = up().start()
    u.wait_state("a", "starting")
    row = u.service_status("a")
    assert row["state"] == "starting" and "no READY=1 on NOTIFY_SOCKET yet" in row["waiting_on"]
    (tmp_path / "GO").touch()
    u.wait_state("b", "ready")
    row = u.service_status("a")
    assert row["state"] == "ready" and row["notify"] == "serving 3 clients"
    table = subprocess.run([PY, "-m", "supervisor", "status"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=20)
    assert re.search(r"^a\s+ready .*serving 3 clients$", table.stdout, re.M), table.stdout
    assert u.stop() == 0


@together
def test_systemd_notify_ready_is_accepted(stack, up, tmp_path) -> None:
    tool = shutil.which("systemd-notify")
    if tool is None:
        pytest.skip("systemd-notify is not installed (apt-get install --no-install-recommends systemd)")
    stack.unit("a", command=["sh", "-c", f"while [ ! -e GO ]; do sleep 0.02; done; "
                                         f"{tool} --ready --status='up and running'; exec sleep 600"],
               ready={"notify": True, "timeout": "20s"})
    u = up().start()
    u.wait_state("a", "starting")
    (tmp_path / "GO").touch()
    u.wait_state("a", "ready")
    assert u.service_status("a")["notify"] == "up and running"
    assert "not a process of" not in u.out, u.out
    assert u.stop() == 0


@together
def test_one_service_cannot_speak_for_another(stack, up, tmp_path, shared) -> None:
    """evil sends READY=1 to a's socket: with its own pid (not a process of a), and, running as nobody,
    claiming a's pid in SCM_CREDENTIALS (the kernel refuses the forgery): a stays starting."""
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' to run the forging sender as")
    if os.geteuid() != 0:
        pytest.skip("running a service as another user needs root")
    stack.unit("a", command=["sh", "-c", f"echo $$$$ > {shared}/a.pid; exec sleep 600"],
               ready={"notify": True, "timeout": "30s"})
    evil = "import os; print(os.environ['QASUP_DAEMON'], flush=True); import time; time.sleep(600)"
    stack.unit("daemonid", command=["/usr/bin/python3", "-c", evil], ready={"log": "^[0-9a-f]+$"})
    u = up().start()
    u.wait_state("daemonid", "ready")
    daemon_id = u.log("daemonid").decode().split()[0]
    address = f"@qasup-{daemon_id}-a"
    os.chmod(tmp_path, 0o755)
    stack.unit("evil", command=_sender(shared, "READY=1\\nSTATUS=forged", address))
    stack.unit("forger", command=_sender(shared, "READY=1\\nSTATUS=forged", address, str(shared / "a.pid")),
               user="nobody")
    r = subprocess.run([PY, "-m", "supervisor", "reload"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    u.wait_state("evil", "ready")
    u.wait_state("forger", "ready")
    (tmp_path / "GO").touch()
    poll(lambda: b"sent" in u.log("evil") and b"send failed" in u.log("forger"), 10,
         lambda: f"both senders to have tried; output:\n{u.out}")
    assert b"send failed: Operation not permitted" in u.log("forger")   # the kernel refuses a forged pid
    u.wait_out("a: sd_notify message from pid")
    row = u.service_status("a")
    assert row["state"] == "starting" and row["notify"] is None
    assert re.search(r"a: sd_notify message from pid \d+, which is not a process of a: ignored", u.out)
    assert u.stop() == 0


@together
def test_redis_supervised_systemd_says_ready(stack, up, tmp_path) -> None:
    redis = shutil.which("redis-server")
    if redis is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    stack.unit("redis", command=[redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", str(tmp_path), "--supervised", "systemd", "--daemonize", "no"],
               ready={"notify": True, "timeout": "20s"})
    u = up().start()
    u.wait_state("redis", "ready", timeout=20)
    row = u.service_status("redis")
    assert row["notify"] and "accept" in row["notify"].lower(), row   # redis's own STATUS= words
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:   # ready means it serves
        c.sendall(b"PING\r\n")
        assert c.recv(64) == b"+PONG\r\n"
    assert u.stop() == 0


# forking, no pid_file, two processes left (ambiguous without MAINPID): the daemon names itself
FORKING = r'''
import os, socket, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        if os.fork() == 0:           # a helper of its own, orphaned in a session of its own: a second root
            os.setsid()
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)
        with open("daemon.pid", "w") as f:
            f.write(str(os.getpid()))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(f"{os.environ.get('SAY_MAINPID', 'MAINPID=' + str(os.getpid()))}\nREADY=1\nSTATUS=forked".encode(),
                 b"\0" + os.environ["NOTIFY_SOCKET"][1:].encode())
        time.sleep(600)
        os._exit(0)
    os._exit(0)
os.wait()
'''


@together
def test_mainpid_names_a_forking_services_main_process(stack, up, tmp_path) -> None:
    stack.unit("d", type="forking", command=[PY, "-c", FORKING], ready={"notify": True, "timeout": "20s"})
    u = up().start()
    u.wait_state("d", "ready", timeout=20)
    daemon = int((tmp_path / "daemon.pid").read_text())
    row = u.service_status("d")
    assert row["pid"] == daemon and row["notify"] == "forked"
    assert u.stop() == 0


def test_without_mainpid_the_same_daemon_is_ambiguous(stack, up, tmp_path) -> None:
    """The control for the test above: without MAINPID= the two roots leave the main process unknown."""
    stack.unit("d", type="forking", command=[PY, "-c", FORKING], ready={"notify": True, "timeout": "1s"},
               env={"SAY_MAINPID": "X=1"}, restart={"policy": "never"})
    u = up().start()
    u.wait_state("d", "failed", timeout=20)
    assert "ambiguous" in (u.service_status("d")["last_error"] or ""), u.out
    assert u.stop() == 0


# READY=1, then WATCHDOG=1 every 0.1 s until the file STOP exists (it stays running, silent)
PINGER = r'''
import os, socket, time
print("WATCHDOG_USEC=" + os.environ.get("WATCHDOG_USEC", "unset"), flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
address = b"\0" + os.environ["NOTIFY_SOCKET"][1:].encode()
s.sendto(b"READY=1", address)
while not os.path.exists("STOP"):
    s.sendto(b"WATCHDOG=1", address)
    time.sleep(0.1)
time.sleep(600)
'''


def test_live_watchdog_restarts_a_service_that_stops_sending(stack, up, tmp_path) -> None:
    stack.unit("w", command=[PY, "-c", PINGER], ready={"notify": True, "timeout": "20s"},
               live={"watchdog": "400ms"}, restart={"delay": "100ms"})
    u = up().start()
    ready = u.wait_state("w", "ready")
    assert b"WATCHDOG_USEC=400000" in u.log("w")
    # pinging: still the first instance after more than two watchdog periods
    poll(lambda: time.time() > ready["ts"] + 1.0, 5, "1 s of pings")
    assert u.states("w").count("ready") == 1 and "no WATCHDOG=1" not in u.out
    (tmp_path / "STOP").touch()
    stopping = poll(lambda: next((e for e in u.events() if e.get("service") == "w" and e["state"] == "stopping"),
                                 None), 10, lambda: f"w stopping; output:\n{u.out}")
    assert "no WATCHDOG=1 for 0.4s" in stopping["message"], stopping
    assert stopping["ts"] - ready["ts"] >= 1.0
    (tmp_path / "STOP").unlink()
    u.wait_state("w", "ready", nth=2)
    assert u.service_status("w")["restarts"] == 1
    assert u.stop() == 0


@together
@pytest.mark.parametrize(("unit", "message"), [
    ('command = ["x"]\n[ready]\nnotify = "yes"\n', "a.toml: ready.notify: expected true or false, got a string"),
    ('command = ["x"]\n[live]\nwatchdog = "30s"\n', "a.toml: live.watchdog: needs [ready] notify = true"),
    ('command = ["x"]\n[ready]\nnotify = true\n[live]\nwatchdog = "soon"\n', "a.toml: live.watchdog: "),
])
def test_bad_notify_keys_are_reported_at_check_time(tmp_path, unit, message) -> None:
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.toml").write_text(unit)
    r = subprocess.run([PY, "-m", "supervisor", "check"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                       env={**os.environ, "QASUP_GPUS": "none"})
    assert r.returncode == 2 and message in r.stdout + r.stderr, r.stdout + r.stderr


# READY=1, then for each file named on the command line, once it exists, the message after the colon
PHASES = r'''
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
address = b"\0" + os.environ["NOTIFY_SOCKET"][1:].encode()
s.sendto(b"READY=1\nSTATUS=serving", address)
for step in sys.argv[1:]:
    name, _, msg = step.partition(":")
    while not os.path.exists(name):
        time.sleep(0.02)
    s.sendto(msg.replace("|", "\n").encode(), address)
time.sleep(600)
'''


@together
def test_reloading_and_stopping_show_in_status(stack, up, tmp_path) -> None:
    stack.unit("p", command=[PY, "-c", PHASES, "R:RELOADING=1", "D:READY=1|STATUS=reloaded", "S:STOPPING=1"],
               ready={"notify": True, "timeout": "20s"})
    u = up().start()
    u.wait_state("p", "ready")
    poll(lambda: u.service_status("p")["notify"] == "serving", 5, "STATUS=serving")
    for name, shown in (("R", "reloading (sd_notify); serving"), ("D", "reloaded"), ("S", "stopping (sd_notify); reloaded")):
        (tmp_path / name).touch()
        poll(lambda shown=shown: u.service_status("p")["notify"] == shown, 5,
             lambda shown=shown: f"notify {shown!r}, got {u.service_status('p')['notify']!r}")
    assert u.service_status("p")["state"] == "ready"   # what the service says is shown, not acted on
    assert u.stop() == 0
