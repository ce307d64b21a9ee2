"""``qasup up`` stopping: reverse dependency order, stop signal and time-out, stubborn trees, the stop
budget; qasup as PID 1 in a PID namespace; state and log folders."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from enginehelp import PY, alive, poll, stack, standin, together, together_alone, together_results, unshare_problem, up  # noqa: F401  (fixtures)

SLEEP = ["sh", "-c", "echo up; exec sleep 100"]


def slow(delay: float) -> list[str]:
    return [PY, standin("svc_slowstop.py"), "--stop-delay", str(delay)]


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (zombies included: they are what a reaper must collect)."""
    kids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        kids += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return kids


def test_stop_in_reverse_dependency_order_in_parallel_where_possible(stack, up):
    stack.unit("base", command=slow(0.3), ready={"log": "started"})
    stack.unit("mid1", command=slow(0.3), ready={"log": "started"}, requires=["base"])
    stack.unit("mid2", command=slow(0.3), ready={"log": "started"}, requires=["base"])
    stack.unit("top", command=slow(0.3), ready={"log": "started"}, requires=["mid1"])
    u = up().start()
    u.wait_out("services ready")
    t0 = time.monotonic()
    assert u.stop() == 0
    took = time.monotonic() - t0
    ev = {(e["service"], e["state"]): e["ts"] for e in u.events()
          if e.get("service") and e["state"] in ("stopping", "stopped")}
    # top and mid2 have no running dependents: they stop at once, together
    assert abs(ev["top", "stopping"] - ev["mid2", "stopping"]) < 0.1
    assert ev["mid1", "stopping"] >= ev["top", "stopped"]
    assert ev["base", "stopping"] >= max(ev["mid1", "stopped"], ev["mid2", "stopped"])
    for n in ("base", "mid1", "mid2", "top"):
        assert ev[n, "stopped"] - ev[n, "stopping"] >= 0.29
    # three levels of 0.3 s each (not four: mid2 stopped alongside top)
    assert 0.9 <= took < 2.5


def test_stop_signal_then_sigkill_to_the_whole_tree(stack, up, tmp_path):
    stack.unit("usr1", command=["sh", "-c", 'trap "echo got-usr1; exit 0" USR1; echo up; '
                                "while :; do sleep 0.05; done"],
               ready={"log": "^up$"}, stop={"signal": "SIGUSR1", "timeout": "5s"})
    stack.unit("tree", command=[PY, standin("svc_tree.py")], env={"TREE_PIDS": str(tmp_path / "pids")},
               ready={"log": "tree up"}, stop={"timeout": "400ms"})
    u = up().start()
    u.wait_out("services ready")
    child, daemon = map(int, (tmp_path / "pids").read_text().split())
    assert alive(child) and alive(daemon)
    assert u.stop() == 5   # the tree ignores SIGTERM: SIGKILLed at its timeout (usr1 stopped cleanly)
    assert "stack stopped: tree had to be killed (SIGKILL)" in u.out
    assert b"got-usr1" in u.log("usr1")
    ev = {(e["service"], e["state"]): e for e in u.events() if e.get("service")}
    assert ev["usr1", "stopped"]["ts"] - ev["usr1", "stopping"]["ts"] < 1.0
    took = ev["tree", "stopped"]["ts"] - ev["tree", "stopping"]["ts"]
    assert 0.35 <= took < 2.0, "SIGTERM ignored by the tree: SIGKILL after the stop timeout"
    assert not alive(child) and not alive(daemon)
    assert u.leftovers() == []


def test_shutdown_respects_stop_budget(stack, up):
    stack.stack(stop_budget="1s")
    stack.unit("deaf", command=[PY, standin("svc_slowstop.py"), "--ignore-term"], ready={"log": "started"},
               stop={"timeout": "30s"})
    stack.unit("user", command=[PY, standin("svc_slowstop.py"), "--ignore-term"], ready={"log": "started"},
               stop={"timeout": "30s"}, requires=["deaf"])
    u = up().start()
    u.wait_out("services ready")
    t0 = time.monotonic()
    u.signal(signal.SIGTERM)
    u.wait(10)
    assert 0.9 <= time.monotonic() - t0 < 2.5
    assert "stop budget (1s) spent" in u.out
    assert u.leftovers() == []


@together
def test_pid1_reaps_orphans_reports_exit_codes_and_stops_in_order(stack, up):
    problem = unshare_problem()
    if problem:
        pytest.skip(problem)
    stack.unit("storm", command=[PY, standin("svc_exit.py"), "--orphans", "1000", "--code", "7"],
               restart={"policy": "never"})
    stack.unit("a", command=slow(0.1), ready={"log": "started"})
    stack.unit("b", command=slow(0.1), ready={"log": "started"}, requires=["a"])
    u = up().start(wrap=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
    u.wait_state("storm", "failed", timeout=20)
    u.wait_state("b", "ready")
    code, doc = u.status()
    assert doc["stack"]["pid"] == 1
    st = {s["name"]: s for s in doc["services"]}
    assert st["storm"]["exit_code"] == 7
    qasup = poll(lambda: children(u.proc.pid), 5, "qasup inside the namespace")[0]
    # every orphan reaped: qasup's only children are the two services and its guardian
    poll(lambda: len(children(qasup)) == 3, 5, f"no zombie children of PID 1 (has {len(children(qasup))})")
    os.kill(qasup, signal.SIGTERM)
    assert u.wait(10) == 0
    ev = {(e["service"], e["state"]): e["ts"] for e in u.events() if e.get("service")}
    assert ev["a", "stopping"] >= ev["b", "stopped"]


@together
def test_log_and_state_folders_are_created_or_a_clear_error(stack, up, tmp_path):
    stack.stack(log_dir="deep/logs", state_dir="var/state/qasup")
    stack.unit("a", command=SLEEP, ready={"log": "up"}, log={"file": "other/place/a.log"})
    stack.unit("b", command=SLEEP, ready={"log": "up"})
    u = up().start()
    u.wait_out("services ready")
    assert (tmp_path / "var/state/qasup/events.jsonl").exists()
    assert (tmp_path / "other/place/a.log").read_bytes() == b"up\n"
    assert (tmp_path / "deep/logs/b.log").read_bytes() == b"up\n"
    assert u.stop() == 0

    (tmp_path / "afile").write_text("a file where a folder should be\n")
    stack.stack(log_dir="afile/logs", state_dir="var/state/qasup")
    stack.unit("b", command=SLEEP, ready={"log": "up"}, restart={"policy": "never"})
    stack.unit("c", command=SLEEP, log={"file": "/proc/1/not-here/c.log"}, restart={"policy": "never"})
    u = up().start()
    u.wait_state("b", "failed")
    u.wait_state("c", "failed")
    u.wait_out(f"cannot create log folder {tmp_path}/afile/logs")   # stdout is not ordered with events
    u.wait_out("cannot create log folder /proc/1/not-here")
    out = u.out
    assert f"cannot create log folder {tmp_path}/afile/logs" in out
    assert "cannot create log folder /proc/1/not-here" in out
    assert "Traceback" not in out
    assert u.stop() == 0

    stack.stack(log_dir="deep/logs", state_dir="afile/state")
    u = up().start()
    assert u.wait() == 1
    assert f"{tmp_path}/afile/state: Not a directory" in u.out
    assert "Traceback" not in u.out


@together
def test_shutdown_while_preparing_waiting_and_in_backoff(stack, up, tmp_path):
    stack.unit("prep", command=SLEEP, prepare={"command": ["sh", "-c", "echo preparing; sleep 0.5 & exec sleep 100"]})
    stack.unit("after-prep", command=SLEEP, requires=["prep"])
    stack.unit("loop", command=["sh", "-c", "exit 1"], restart={"policy": "always", "delay": "10s"})
    u = up().start()
    u.wait_state("prep", "preparing")
    u.wait_state("loop", "backoff")
    u.wait_out("prep: prepare: sh -c", 5)
    t0 = time.monotonic()
    assert u.stop() == 0
    assert time.monotonic() - t0 < 3
    assert "starting" not in u.states("after-prep")
    assert u.states("loop")[-1] == "stopped" and u.states("prep")[-1] == "stopped"
    assert u.leftovers() == []
