"""Tracking that nothing escapes: per-service cgroups, the guardian's ledger, the PID-1 sweep.

Real processes throughout. The escapees here do what the issue's programs do: ``setsid env -i CMD &`` (a new
session and an empty environment: no tag to find them by), double forks that leave them orphaned, and members
of a service's session whose environment is empty (as nginx and redis look once they have overwritten theirs).
Each escapee writes its own pid to a file; the tests kill whatever is left of them at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from supervisor.proc import guardkill
from supervisor.proc.cgroup import CgroupTree, _ticks_now
from supervisor.proc.cgroupfs import find_hierarchy
from supervisor.proc.guardian import DAEMON_VARIABLE, guardian_argv
from supervisor.proc.kernel import set_subreaper
from supervisor.proc.ledger import COMPACT_AT, Ledger, parse_ledger
from supervisor.proc.proctable import read_stat
from supervisor.proc.reaper import Reaper
from supervisor.proc.stop import terminate
from supervisor.proc.tree import anything_left, members

from enginehelp import Stack, Up, alive, poll, stack, together, together_alone, together_results, unshare_problem, up  # noqa: F401  (fixtures)

PY = sys.executable


def _hierarchy_or_skip(version: str) -> None:
    found = find_hierarchy(version)
    if isinstance(found, str):
        pytest.skip(f"no cgroup {version} here: {found}")


def _cgroups_or_skip() -> None:
    found = find_hierarchy()
    if isinstance(found, str):
        pytest.skip(f"no cgroups here: {found}")


def _pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _escapee(pidfile: Path, dollar: str = "$") -> str:
    """Shell text that starts an orphaned, setsid'd process with an empty environment (it writes its pid)."""
    return f"(setsid env -i /bin/sh -c 'echo {dollar}{dollar} >> {pidfile}; exec sleep 100' &)"


@pytest.fixture
def escapees(tmp_path: Path) -> Iterator[Path]:
    """A pid file for escapees; whatever of them is still alive at the end is killed."""
    f = tmp_path / "escapees"
    yield f
    _kill(_pids(f))


# ------------------------------------------------------------------------------------------ cgroups, in process


@pytest.mark.parametrize("version,leaves", [("v2", True), ("v2", False), ("v1", True)],
                         ids=["v2", "v2-serialized", "v1"])
def test_each_spawn_gets_a_cgroup_that_holds_its_escapees(version: str, leaves: bool, escapees: Path) -> None:
    _hierarchy_or_skip(version)
    before = Path("/proc/self/cgroup").read_text()

    async def main() -> None:
        tree = CgroupTree.open(uuid.uuid4().hex[:16], prefer=version)
        assert tree is not None
        tree._thread_leaves = leaves   # False: what a kernel without threaded cgroups gets
        try:
            async with Reaper.open(cgroups=tree) as reaper:
                # the leader double-forks a setsid'd, environment-less child and exits: no group, no session,
                # no tag, no parent left to find it by; only the cgroup holds it
                child = await reaper.spawn_async(["/bin/sh", "-c", _escapee(escapees)], cwd="/",
                                                 env=dict(os.environ), stdout=None, stderr=None, tag="esc")
                assert child.cgroup is not None and child.cgroup.path.startswith(tree.root)
                assert await child.wait() == 0
                (esc,) = poll(lambda: _pids(escapees), 10, "the escapee's pid")
                assert esc in child.cgroup.pids()
                assert esc in members(child)
                assert anything_left(child)
                assert child.cgroup.path.removeprefix(tree.base) in Path(f"/proc/{esc}/cgroup").read_text()
                child.cgroup.kill()
                poll(lambda: not child.cgroup.populated() and not alive(esc), 10, "the cgroup to empty")
                assert not anything_left(child)
                assert not os.path.exists(child.cgroup.path)   # an empty cgroup of an exited leader is removed
        finally:
            assert tree.close()
            set_subreaper(False)
        assert not os.path.exists(tree.root)

    anyio.run(main)
    assert Path("/proc/self/cgroup").read_text() == before   # the test process (as qasup) moved back out


@pytest.mark.parametrize("leaves", [True, False], ids=["thread-leaf", "serialized"])
def test_what_a_child_forked_before_its_placement_is_placed_with_it(leaves: bool, escapees: Path) -> None:
    """The moment between a child's exec and its move into its cgroup, stretched: the child double-forks an
    environment-less escapee and exits before it is placed; placing it still takes the escapee along, and nothing
    of it stays in qasup's own cgroup."""
    _cgroups_or_skip()
    tree = CgroupTree.open(uuid.uuid4().hex[:16])
    assert tree is not None
    tree._thread_leaves = leaves
    other = subprocess.Popen(["sleep", "60"])   # forked by "qasup" before the spawn, not through it
    started = read_stat(other.pid)
    assert started is not None
    poll(lambda: _ticks_now() > started.start + 2, 5, "a clock tick (start times are in ticks) to pass")
    try:
        cgroup = tree.make("window")
        assert cgroup is not None
        with tree.spawning() as slot:
            leader = subprocess.Popen(["/bin/sh", "-c", _escapee(escapees)])
            assert leader.wait(10) == 0
            (esc,) = poll(lambda: _pids(escapees), 10, "the escapee")
            assert Path(f"/proc/{esc}/stat").read_text().split()[3] != str(leader.pid)   # orphaned: no parent link
            assert slot.place(cgroup, leader.pid) is cgroup
        assert cgroup.pids() == {esc}
        assert other.pid not in cgroup.pids() and alive(other.pid)
        assert set(tree._in_leaf()) <= {other.pid}
    finally:
        other.kill()
        other.wait()
        tree.close()


def test_stop_of_a_cgroup_service_reaches_an_orphaned_escapee(escapees: Path) -> None:
    _cgroups_or_skip()

    async def main() -> None:
        tree = CgroupTree.open(uuid.uuid4().hex[:16])
        assert tree is not None
        try:
            async with Reaper.open(cgroups=tree) as reaper:
                child = await reaper.spawn_async(["/bin/sh", "-c", _escapee(escapees) + "; exec sleep 100"],
                                                 cwd="/", env=dict(os.environ), stdout=None, stderr=None, tag="s")
                (esc,) = poll(lambda: _pids(escapees), 10, "the escapee's pid")
                with anyio.fail_after(20):
                    assert await terminate(child, signal.SIGTERM, 5) == 128 + signal.SIGTERM
                assert not alive(esc)
        finally:
            tree.close()
            set_subreaper(False)

    anyio.run(main)


def test_a_stale_tree_of_a_dead_daemon_is_removed_and_a_live_one_kept() -> None:
    _cgroups_or_skip()
    found = find_hierarchy()
    assert not isinstance(found, str)
    base = found[1]
    stale, live = (os.path.join(base, f"qasup-{uuid.uuid4().hex[:16]}") for _ in range(2))
    for tree in (stale, live):
        os.makedirs(os.path.join(tree, "qasup"))
        os.mkdir(os.path.join(tree, "web.1"))
    holder = subprocess.Popen(["sleep", "60"])   # a live daemon is in its own leaf
    try:
        Path(live, "qasup", "cgroup.procs").write_text(str(holder.pid))
        tree = CgroupTree.open(uuid.uuid4().hex[:16])
        assert tree is not None
        try:
            tree._remove_stale(min_age=0)   # (at open, only trees a minute old are considered)
        finally:
            tree.close()
        assert not os.path.exists(stale)
        assert os.path.exists(os.path.join(live, "web.1"))
    finally:
        holder.kill()
        holder.wait()
        poll(lambda: CgroupTree(live, base, found[0], found[2]).close(), 10, "the live tree's removal")


# ------------------------------------------------------------------------------------------ qasup up


def test_setsid_env_i_escapee_is_stopped_by_stop_and_restart(stack: Stack, up, escapees: Path) -> None:
    _cgroups_or_skip()
    stack.unit("esc", command=["/bin/sh", "-c", _escapee(escapees, "$$") + "; echo up; exec sleep 100"],
               ready={"log": "up"}, stop={"timeout": "5s"})
    u = up().start("--no-echo")
    u.wait_state("esc", "ready", 20)
    (first,) = poll(lambda: _pids(escapees), 10, "the first escapee")
    cgroup = Path(f"/proc/{first}/cgroup").read_text()
    assert "/qasup-" in cgroup, cgroup

    assert subprocess.run([PY, "-m", "supervisor", "stop", "esc"], cwd=stack.root, timeout=30).returncode == 0
    assert not alive(first), "stop left the escapee running"

    assert subprocess.run([PY, "-m", "supervisor", "start", "esc"], cwd=stack.root, timeout=30).returncode == 0
    second = poll(lambda: _pids(escapees)[1:], 10, "the second escapee")[0]
    assert subprocess.run([PY, "-m", "supervisor", "restart", "esc"], cwd=stack.root, timeout=30).returncode == 0
    poll(lambda: len(_pids(escapees)) == 3, 10, "the third escapee")
    running = [p for p in _pids(escapees) if alive(p)]
    assert running == [_pids(escapees)[2]], f"not exactly one copy after the restart: {running} (second {second})"

    assert u.stop() == 0
    assert not [p for p in _pids(escapees) if alive(p)]
    tree = cgroup.split("/qasup-", 1)[1].split("/", 1)[0]
    found = find_hierarchy()
    assert not isinstance(found, str)
    assert not os.path.exists(os.path.join(found[1], f"qasup-{tree}")), "the daemon's cgroup outlived it"


def _shapes(tmp_path: Path) -> tuple[str, dict[str, Path]]:
    """A service whose processes cannot be found by the environment tag: A stays in the leader's session with
    an empty environment (nginx's workers), B is the leader's child in a session of its own with an empty
    environment, C is orphaned too (only a cgroup finds it)."""
    files = {k: tmp_path / k for k in "ABC"}
    body = "exec sleep 100"
    script = (f"env -i /bin/sh -c 'echo $$$$ > {files['A']}; {body}' & "
              f"setsid env -i /bin/sh -c 'echo $$$$ > {files['B']}; {body}' & "
              f"(setsid env -i /bin/sh -c 'echo $$$$ > {files['C']}; {body}' &); echo up; wait")
    return script, files


@together
@pytest.mark.parametrize("cgroups", ["cgroups", "none"])
def test_sigkilled_qasup_guardian_kills_what_the_tag_cannot_find(stack: Stack, up, tmp_path: Path,
                                                                 cgroups: str) -> None:
    if cgroups == "cgroups":
        _cgroups_or_skip()
    script, files = _shapes(tmp_path)
    stack.unit("shapes", command=["/bin/sh", "-c", script], ready={"log": "up"})
    u = up().start("--no-echo", env={"QASUP_CGROUPS": "auto" if cgroups == "cgroups" else "none"})
    try:
        u.wait_state("shapes", "ready", 20)
        pids = {k: poll(lambda f=f: _pids(f), 10, f"process {k}")[0] for k, f in files.items()}
        for k, pid in pids.items():
            assert DAEMON_VARIABLE.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), k
        u.signal(signal.SIGKILL)
        u.wait(10)
        must_go = "ABC" if cgroups == "cgroups" else "AB"   # without cgroups, C is out of every reach
        poll(lambda: not [k for k in must_go if alive(pids[k])], 10,
             lambda: f"{must_go} gone after qasup was SIGKILLed; alive: {[k for k in pids if alive(pids[k])]}")
        if cgroups == "cgroups":
            found = find_hierarchy()
            assert not isinstance(found, str)
            poll(lambda: not [n for n in os.listdir(found[1]) if n.startswith("qasup-") and
                              os.path.exists(os.path.join(found[1], n, "shapes.1"))], 10,
                 "the guardian to remove the daemon's cgroup")
    finally:
        _kill([p for f in files.values() for p in _pids(f)])


@together
def test_pid1_sweeps_what_no_tracking_found(stack: Stack, up, tmp_path: Path) -> None:
    if problem := unshare_problem():
        pytest.skip(problem)
    polite, stubborn, got = tmp_path / "polite", tmp_path / "stubborn", tmp_path / "got-term"
    code = ("import os, signal, sys, time\n"
            "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
            "def term(*_):\n"
            "    if sys.argv[2] == '-':\n"
            "        return\n"
            "    open(sys.argv[2], 'w').write('TERM')\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, term)\n"
            "while True:\n"
            "    time.sleep(1)\n")
    (tmp_path / "stray.py").write_text(code)
    # orphaned, setsid'd, environment-less, and without cgroups: only the sweep can reach them
    stray = f"setsid env -i {PY} -S {tmp_path / 'stray.py'}"
    script = (f"({stray} {polite} {got} >/dev/null 2>&1 &); ({stray} {stubborn} - >/dev/null 2>&1 &); "
              "echo up; exec sleep 100")
    stack.unit("leaky", command=["/bin/sh", "-c", script], ready={"log": "up"}, stop={"timeout": "5s"})
    u = up().start("--no-echo", env={"QASUP_CGROUPS": "none"},
                   wrap=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
    init = int(poll(lambda: (Path(f"/proc/{u.proc.pid}/task/{u.proc.pid}/children").read_text().split()
                             or [None])[0], 10, "unshare's child"))
    u.wait_state("leaky", "ready", 20)
    poll(lambda: polite.exists() and stubborn.exists(), 10, "both strays")
    os.kill(init, signal.SIGTERM)
    u.wait(30)
    assert "PID 1: 2 process(es) still ran after the stop; sent SIGTERM, then SIGKILL to 1" in u.out, u.out
    assert got.read_text().strip() == "TERM"   # the polite one had SIGTERM (and its grace), not the kernel's SIGKILL


# ------------------------------------------------------------------------------------------ the ledger


def _files(ledger: Ledger) -> list[bytes]:
    return [guardkill.read_fd(fd) for fd in ledger.fds]


def test_ledger_stays_bounded_across_100000_restarts() -> None:
    ledger = Ledger()
    try:
        me = read_stat(os.getpid())
        assert me is not None
        ledger.note_stat(me)   # a process that lives on: kept by every snapshot
        biggest = 0
        for n in range(100_000):   # services restarted 100 000 times: pids that are gone (above pid_max)
            pid = 5_000_000 + n % 30000
            ledger.note(pid, n, pid, pid)
            biggest = max(biggest, ledger.size())
        assert ledger.snapshots > 10
        assert biggest <= 2 * COMPACT_AT + 4096, biggest
        assert len(ledger) < 5000
        records = parse_ledger(_files(ledger))
        assert (me.pid, me.start, me.pgid, me.sid) in records
        assert records == guardkill.parse_ledger(_files(ledger))
    finally:
        ledger.close()


@pytest.mark.parametrize("cut", [0, 1, 5, 9, 13, 20])
def test_ledger_reading_ignores_torn_writes(cut: int) -> None:
    old = b"G 3\n11 1 11 11\nS\n12 2 12 12\n"
    new = b"G 4\n21 1 21 21\nS\n22 2 22 22\n"
    torn = new[:cut]   # qasup killed in the middle of writing the new snapshot
    for reader in (parse_ledger, guardkill.parse_ledger):
        got = reader([old, torn])
        assert got == ([(11, 1, 11, 11), (12, 2, 12, 12)] if b"S\n" not in torn else [(21, 1, 21, 21)])
        assert reader([old + b"13 3 1", new]) == [(21, 1, 21, 21), (22, 2, 22, 22)]
        assert reader([old + b"13 3 1"]) == [(11, 1, 11, 11), (12, 2, 12, 12)]   # torn last line


def test_guardian_kills_recorded_processes_and_sessions_never_a_recycled_pid() -> None:
    env = {k: v for k, v in os.environ.items() if k != DAEMON_VARIABLE}
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    recorded = subprocess.Popen(["sleep", "60"], env=clean_env, start_new_session=True)
    recycled = subprocess.Popen(["sleep", "60"], env=clean_env, start_new_session=True)
    # a session whose leader is gone: its member lives on (nginx's workers after the master died)
    member_of = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & echo $!; exit 0"], env=clean_env,
                                 stdout=subprocess.PIPE, start_new_session=True)
    orphan = int(member_of.stdout.readline())
    member_of.wait(10)
    bystander = subprocess.Popen(["sleep", "60"], env=clean_env, start_new_session=True)
    ledger = Ledger()
    read_fd, write_fd = os.pipe()
    guard = None
    try:
        for proc in (recorded, member_of):
            st = read_stat(proc.pid) if proc is recorded else None
            start = st.start if st is not None else 1   # the session leader (exited) had some start time
            ledger.note(proc.pid, start, proc.pid, proc.pid)
        st = read_stat(recycled.pid)
        assert st is not None
        ledger.note(recycled.pid, st.start + 1, recycled.pid, recycled.pid)   # "the pid now belongs to another"
        guard = subprocess.Popen(guardian_argv(uuid.uuid4().hex, ledger_fds=ledger.fds), stdin=read_fd, env=env,
                                 pass_fds=ledger.fds)
        os.close(read_fd)
        os.close(write_fd)   # what qasup's death does
        assert guard.wait(20) == 0
        assert recorded.wait(5) == -signal.SIGKILL
        poll(lambda: not alive(orphan), 5, "the member of the recorded session")
        assert recycled.poll() is None, "a pid with another start time was killed"
        assert bystander.poll() is None
    finally:
        _kill([orphan])
        for p in (recorded, recycled, bystander, guard):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        ledger.close()
