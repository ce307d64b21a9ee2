"""Daemonizing programs: ``type = "forking"`` with and without ``pid_file``, and a ``simple`` service that
daemonizes anyway (a failed start that says how to keep it in the foreground). Plus: log files hold the
service's bytes only, whatever qasup says about it.

Every test runs ``qasup up`` as a subprocess with real daemonizing programs (double fork, setsid, a pid file
written late) and reads what a user sees: status, events, stdout, log files, /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess

from enginehelp import PY, alive, poll, stack, together, together_alone, together_results, up  # noqa: F401  (fixtures)

# A daemon the classic way: fork, setsid, fork again, the launcher exits 0 once the intermediate has gone.
# The daemon writes its pid file late (PID_DELAY), prints "daemon serving PID" on the inherited output, and
# stops on SIGTERM saying so. argv: PID_FILE|- PID_CONTENT|- (what to write instead of its pid) COUNT
DAEMON = r'''
import os, signal, sys, time
pid_file, content, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for n in range(count):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            def bye(sig, frame):
                print(f"daemon {os.getpid()} stopping", flush=True)
                os._exit(0)
            signal.signal(signal.SIGTERM, bye)
            time.sleep(0.3)
            if pid_file != "-" and n == 0:
                with open(pid_file + ".tmp", "w") as f:
                    f.write((content if content != "-" else str(os.getpid())) + "\n")
                os.rename(pid_file + ".tmp", pid_file)
            print(f"daemon serving {os.getpid()}", flush=True)
            while True:
                signal.pause()
        os._exit(0)
    os.wait()
print("launcher done", flush=True)
'''


def write_daemon(tmp_path) -> str:
    """DAEMON as a file of the test's folder; its path."""
    p = tmp_path / "daemon.py"
    p.write_text(DAEMON)
    return str(p)


def daemon_pid(u, name: str) -> int:
    line = poll(lambda: next((x for x in u.log(name).splitlines() if x.startswith(b"daemon serving ")), None),
                10, "the daemon's first line")
    return int(line.split()[-1])


def pid_events(u, name: str) -> list[int]:
    return [e["pid"] for e in u.events() if e.get("service") == name and "pid" in e]


@together
def test_forking_daemon_is_followed_stopped_and_restarted(stack, up, tmp_path):
    daemon_py = write_daemon(tmp_path)
    # "pidfile": the daemon writes run/pidfile.pid late; "single": no pid_file, the one process left is it (and
    # [stop] mode = "main": the stop signal goes to the daemon, not to the launcher that is long gone); pid_file
    # is ${NAME}-expanded like every path of a unit
    (tmp_path / "run").mkdir()
    for name in ("pidfile", "single"):
        with_pid_file = name == "pidfile"
        stack.unit(name, command=[PY, daemon_py, f"run/{name}.pid" if with_pid_file else "-", "-", "1"],
                   type="forking", **({"pid_file": f"${{RUN_DIR}}/{name}.pid", "env": {"RUN_DIR": "run"}}
                                      if with_pid_file else {}),
                   ready={"log": "daemon serving", "timeout": "15s"}, restart={"delay": "100ms"},
                   stop={"mode": "group" if with_pid_file else "main"})
    u = up().start()
    for name in ("pidfile", "single"):
        u.wait_state(name, "ready", 15)
        pid = daemon_pid(u, name)
        st = u.service_status(name)
        assert st["state"] == "ready" and st["pid"] == pid, "status shows the daemon, not the launcher"
        pids = pid_events(u, name)
        assert pids[-1] == pid and pids[0] != pid, "Spawned again with the daemon's pid when it took over"
        assert b"launcher done" in u.log(name)
        # the service's exit is the daemon's exit (its exact code), and the policy restarts it
        os.kill(pid, signal.SIGKILL)
        u.wait_out(f"{name}: exited with code 137 (killed by SIGKILL)")
        u.wait_state(name, "ready", 15, nth=2)
        pid2 = poll(lambda name=name, pid=pid: (p := u.service_status(name)["pid"]) not in (None, pid) and p,
                    10, "the new daemon")
        assert alive(pid2)
        # stop: the daemon gets the stop signal and is gone when stop answers
        r = subprocess.run([PY, "-m", "supervisor", "stop", name], cwd=tmp_path, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not alive(pid2)
        assert f"daemon {pid2} stopping".encode() in u.log(name)
        assert u.service_status(name)["state"] == "stopped"
    assert u.stop() == 0
    assert u.leftovers() == []


CASES = {
    "launcher-fails": (["sh", "-c", "echo cannot start; exit 1"], None,
                       "the launcher exited with code 1"),
    "no-pid-file": ("daemon:-:1", "run/never.pid", "run/never.pid does not exist"),
    "garbage": ("daemon:run/g.pid:hello:1", "run/g.pid", "run/g.pid holds 'hello', not a process id"),
    "not-ours": ("daemon:run/o.pid:TESTPID:1", "run/o.pid", "which is not a process of this service"),
    "ambiguous": ("daemon:-:2", None, "left 2 separate processes running"),
}


@together
def test_forking_start_fails_clearly_and_leaves_nothing(stack, up, tmp_path):
    daemon_py = write_daemon(tmp_path)
    # one stack, one service per way to fail
    (tmp_path / "run").mkdir()
    for name, (command, pid_file, _) in CASES.items():
        if isinstance(command, str):
            _, pf, *rest = command.split(":")
            content, count = ((rest[0].replace("TESTPID", str(os.getpid())), rest[1]) if len(rest) == 2
                              else ("-", rest[0]))
            command = [PY, daemon_py, pf, content, count]
        stack.unit(name, command=command, type="forking", **({"pid_file": pid_file} if pid_file else {}),
                   ready={"timeout": "1500ms"}, restart={"policy": "never"})
    u = up().start()
    for name, (_, _, expected) in CASES.items():
        u.wait_state(name, "failed", 20)
        u.wait_out(f"{name}: start failed: ", 5)
        assert expected in u.out
        st = u.service_status(name)
        assert expected in (st["last_error"] or "") and st["pid"] is None
        daemons = [int(x.split()[-1]) for x in u.log(name).splitlines() if x.startswith(b"daemon serving ")]
        assert all(not alive(p) for p in daemons), "the daemon that could not be followed was stopped"
    assert alive(os.getpid())
    assert u.stop() == 0
    assert u.leftovers() == []


@together
def test_simple_service_that_daemonizes_is_a_failed_start_and_its_daemon_is_stopped(stack, up, tmp_path):
    daemon_py = write_daemon(tmp_path)
    stack.unit("nginxish", command=[PY, daemon_py, "-", "-", "1"], restart={"policy": "on-failure", "delay": "5s"})
    u = up().start()
    u.wait_state("nginxish", "backoff", 15)   # a failure for the restart policy
    u.wait_out("nginxish: start failed: ")    # qasup's stdout is written by a thread: not ordered with events
    assert "nginxish: start failed: the program daemonized: its main process exited 0 and left 1 process " \
           "running" in u.out
    assert "'daemon off;'" in u.out and "--daemonize no" in u.out and 'type = "forking"' in u.out
    assert "daemonized" in u.service_status("nginxish")["last_error"]
    pid = daemon_pid(u, "nginxish")
    assert f"pid {pid}" in u.out
    poll(lambda: not alive(pid), 10, "the daemon to be stopped")
    assert u.stop() == 0
    assert u.leftovers() == []


@together
def test_log_file_holds_only_the_services_bytes(stack, up, tmp_path):
    # prepare runs (its output is the service's), rules fire, readiness passes: the log is exactly the bytes
    out = b"starting\nWARNING: disk\r\nERROR: boom\n\x00\xffraw bytes without newline"
    (tmp_path / "out.bin").write_bytes(out)
    stack.unit("svc", command=["sh", "-c", "cat out.bin; exec sleep 100"],
               prepare={"command": ["sh", "-c", "printf 'prep says hi\\n'"]},
               ready={"log": "^starting$"},
               on_log=[{"match": "^WARNING", "action": "warn", "message": "look at the disk"},
                       {"match": "^ERROR", "action": "warn"}])
    u = up().start()
    u.wait_state("svc", "ready")
    u.wait_out("svc: error rule '^ERROR' (warn)")
    u.wait_out("svc: error rule '^WARNING' (warn)")
    assert "svc: prepare: sh -c" in u.out
    assert u.stop() == 0
    assert u.log("svc") == b"prep says hi\n" + out
    msgs = [e.get("message", "") for e in u.events() if e.get("service") == "svc"]
    assert any(m.startswith("error rule '^ERROR' (warn) matched: ERROR: boom") for m in msgs)
