"""``qasup up``: exit-code fidelity, subreaping, its own signals, and a SIGKILLed qasup."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from enginehelp import PY, alive, poll, stack, standin, together, together_alone, together_results, up  # noqa: F401  (fixtures)

SLEEP = ["sh", "-c", "echo up; exec sleep 100"]


@together
def test_exit_codes_are_reported_exactly_even_in_an_orphan_storm(stack, up):
    never = {"policy": "never"}
    stack.unit("seven", command=[PY, standin("svc_exit.py"), "--orphans", "300", "--delay", "0.3", "--code", "7"],
               restart=never)
    stack.unit("storm", command=[PY, standin("svc_exit.py"), "--orphans", "300", "--delay", "0.3", "--code", "0"],
               restart=never)
    stack.unit("killed", command=[PY, standin("svc_exit.py"), "--delay", "0.2", "--signal", "9"], restart=never)
    stack.unit("termed", command=[PY, standin("svc_exit.py"), "--delay", "0.2", "--signal", "15"], restart=never)
    stack.unit("zero", command=["sh", "-c", "exit 0"], restart=never)
    u = up().start()
    for n in ("seven", "killed", "termed"):
        u.wait_state(n, "failed")
    u.wait_state("storm", "stopped")
    u.wait_state("zero", "stopped")
    st = {s["name"]: s for s in u.status()[1]["services"]}
    assert st["seven"]["exit_code"] == 7 and "code 7" in st["seven"]["last_error"]
    assert st["killed"]["exit_code"] == 137 and "signal 9" in st["killed"]["last_error"]
    assert st["termed"]["exit_code"] == 143
    assert st["storm"]["exit_code"] == 0 and st["storm"]["state"] == "stopped"
    assert st["zero"]["exit_code"] == 0 and st["zero"]["last_error"] is None
    assert "code 7" in u.first("seven", "failed")["message"]
    u.wait_out("seven: exited with code 7")   # qasup's stdout is written by a thread: not ordered with events
    u.wait_out("killed by SIGKILL")
    out = u.out
    assert "seven: exited with code 7" in out and "killed by SIGKILL" in out
    assert u.stop() == 0


@together
def test_orphans_of_services_are_reaped_by_qasup(stack, up, tmp_path):
    # the service double-forks a daemon, which is re-parented to qasup (a child subreaper), not to PID 1
    stack.unit("tree", command=[PY, standin("svc_tree.py")], env={"TREE_PIDS": str(tmp_path / "pids")},
               ready={"log": "tree up"}, stop={"timeout": "300ms"})
    u = up().start()
    u.wait_state("tree", "ready")
    child, daemon = map(int, (tmp_path / "pids").read_text().split())
    ppid = int(open(f"/proc/{daemon}/stat").read().rsplit(")", 1)[1].split()[1])
    assert ppid == u.proc.pid
    assert u.stop() == 5   # its tree ignores SIGTERM: SIGKILLed at the stop timeout, which the exit code says
    assert not alive(child) and not alive(daemon)


@together
def test_sigterm_and_sigint_are_an_ordered_shutdown_sigusr1_is_not_fatal(stack, up):
    stack.unit("a", command=SLEEP, ready={"log": "up"})
    stack.unit("b", command=SLEEP, requires=["a"])
    for sig in (signal.SIGTERM, signal.SIGINT):
        u = up().start()
        u.wait_out("services ready")
        u.signal(signal.SIGUSR1)
        u.signal(signal.SIGUSR2)
        u.signal(signal.SIGHUP)   # a reload with unchanged files: nothing restarts
        u.wait_out("SIGUSR2 received and ignored")
        u.wait_out("reload: changed none")
        assert u.proc.poll() is None
        code, doc = u.status()
        assert code == 0 and doc["stack"]["state"] == "ready"
        u.signal(sig)
        assert u.wait() == 0
        assert u.first("b", "stopped")["ts"] <= u.first("a", "stopping")["ts"]
        assert u.leftovers() == []


def test_second_sigint_kills_everything_now(stack, up):
    stack.unit("stubborn", command=[PY, standin("svc_slowstop.py"), "--ignore-term"], ready={"log": "started"},
               stop={"timeout": "30s"})
    stack.stack(stop_budget="60s")
    u = up().start()
    u.wait_out("services ready")
    u.signal(signal.SIGINT)
    u.wait_state("stubborn", "stopping")
    time.sleep(0.2)   # the service really ignores SIGTERM: still there
    assert u.proc.poll() is None
    t0 = time.monotonic()
    u.signal(signal.SIGINT)
    code = u.wait(5)
    assert time.monotonic() - t0 < 2
    assert code == 130   # a forced stop is not a clean one (the shell's convention for SIGINT)
    assert "second interrupt" in u.out
    assert "[qasup] stack stopped: killed at once by a second interrupt; exit 130" in u.out
    assert u.leftovers() == []


@together
def test_a_shutdown_that_had_to_sigkill_exits_5_and_says_who(stack, up):
    stack.unit("stubborn", command=[PY, standin("svc_slowstop.py"), "--ignore-term"], ready={"log": "started"},
               stop={"timeout": "0.5s"})
    stack.unit("polite", command=SLEEP, ready={"log": "up"})
    u = up().start()
    u.wait_out("services ready")
    u.signal(signal.SIGTERM)
    assert u.wait(10) == 5
    assert ("[qasup] stack stopped: stubborn had to be killed (SIGKILL) after its stop timeout or the stop "
            "budget; exit 5") in u.out
    assert u.out.rstrip().splitlines()[-1].endswith("exit 5")   # the console's last line says how it ended
    assert u.leftovers() == []


@together
def test_a_clean_shutdown_says_so_last_and_exits_0(stack, up):
    stack.unit("a", command=SLEEP, ready={"log": "up"})
    u = up().start()
    u.wait_out("services ready")
    u.signal(signal.SIGTERM)
    assert u.wait(10) == 0
    assert u.out.rstrip().splitlines()[-1] == "[qasup] stack stopped cleanly; exit 0"


@together
def test_sigkilled_qasup_does_not_leave_the_stack_running(stack, up, tmp_path):
    stack.unit("tree", command=[PY, standin("svc_tree.py")], env={"TREE_PIDS": str(tmp_path / "pids")},
               ready={"log": "tree up"})
    stack.unit("plain", command=["sh", "-c", "sleep 100 & echo up; exec sleep 100"], ready={"log": "up"})
    u = up().start()
    u.wait_out("services ready")
    assert len(u.leftovers()) >= 5
    u.signal(signal.SIGKILL)
    u.wait(5)
    poll(lambda: not u.leftovers(), 5, "every service process to be gone after qasup was SIGKILLed")


@pytest.mark.parametrize("shell", ["/bin/sh", None], ids=["sh-waits", "python-waits"])
def test_guardian_kills_what_carries_the_daemon_id_when_its_pipe_closes(shell):
    from supervisor.proc.guardian import DAEMON_VARIABLE, guardian_argv

    daemon_id = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != DAEMON_VARIABLE}
    victim = subprocess.Popen(["sleep", "60"], env={**env, DAEMON_VARIABLE: daemon_id}, start_new_session=True)
    bystander = subprocess.Popen(["sleep", "60"], env={**env, DAEMON_VARIABLE: "another-daemon"})
    read_fd, write_fd = os.pipe()
    guardian = subprocess.Popen(guardian_argv(daemon_id, shell), stdin=read_fd, env=env)
    os.close(read_fd)
    try:
        # while qasup lives, the guardian waits (in /bin/sh when there is one: ~1 MiB instead of Python's 8)
        exe = poll(lambda: os.path.basename(os.readlink(f"/proc/{guardian.pid}/exe")), 5, "the guardian's exe")
        assert ("python" not in exe) == (shell is not None), exe
        time.sleep(0.1)  # a negative check: nothing is killed while the pipe is open
        assert victim.poll() is None and guardian.poll() is None
        os.close(write_fd)  # what qasup's death does
        assert guardian.wait(10) == 0
        assert victim.wait(5) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for p in (victim, bystander, guardian):
            if p.poll() is None:
                p.kill()
                p.wait()
