"""Units of supervisor.proc below the Reaper: wait statuses, the instance tag, /proc parsing, the tree
of one scan, launch arguments and exec error messages. Fast; only plain helper processes (no Reaper)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.proc import proctable
from supervisor.proc.kernel import SpawnError, exit_code
from supervisor.proc.proctable import TAG_VARIABLE, Snapshot, SnapshotCache, add_tag, read_stat, tags_of
from supervisor.proc.spawn import launch_args, popen

PY = sys.executable


@pytest.fixture
def helpers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Plain helper processes, killed and waited for at the end (this is not a qasup process)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            p.kill()
        p.wait()


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_exit_code_is_what_a_shell_reports() -> None:
    assert exit_code(3 << 8) == 3
    assert exit_code(0) == 0
    assert exit_code(signal.SIGKILL) == 128 + signal.SIGKILL
    assert exit_code(0x7F | (signal.SIGSTOP << 8)) == 255   # stopped: never asked for, reported as 255


def test_add_tag_appends_to_the_inherited_tags() -> None:
    env: dict[str, str] = {}
    add_tag(env, "web:1")
    assert env == {TAG_VARIABLE: "web:1"}
    env[TAG_VARIABLE] = "  outer:9 "
    add_tag(env, "web:2")
    assert env[TAG_VARIABLE] == "outer:9 web:2"


def test_tags_and_stat_are_read_from_proc(tmp_path: Path, helpers: list[subprocess.Popen[bytes]]) -> None:
    # a command name with spaces and parentheses: /proc/PID/stat must be split after the last ")"
    odd = tmp_path / "a) b (c"
    shutil.copy("/bin/sleep", odd)
    env = {"PATH": os.defpath, "BEFORE": "x", TAG_VARIABLE: "outer:1 web:2", "AFTER": "y"}
    p = subprocess.Popen([str(odd), "30"], env=env)
    helpers.append(p)
    wait_for(lambda: tags_of(p.pid) != [])
    assert tags_of(p.pid) == [b"outer:1", b"web:2"]
    st = read_stat(p.pid)
    assert st is not None and st.alive and st.ppid == os.getpid() and st.pgid == os.getpgid(0)
    untagged = subprocess.Popen(["/bin/sleep", "30"], env={"PATH": os.defpath})
    helpers.append(untagged)
    wait_for(lambda: read_stat(untagged.pid) is not None)
    assert tags_of(untagged.pid) == []
    assert read_stat(2**22 + 12345) is None and tags_of(2**22 + 12345) == []


def test_snapshot_tree_by_session_descendants_and_tag(helpers: list[subprocess.Popen[bytes]]) -> None:
    leader = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True,
                              env={"PATH": os.defpath})
    helpers.append(leader)
    tagged = subprocess.Popen(["/bin/sleep", "30"], start_new_session=True,
                              env={"PATH": os.defpath, TAG_VARIABLE: "svc:abc"})
    helpers.append(tagged)
    wait_for(lambda: len(Snapshot(scope_all=True).kids.get(leader.pid, [])) == 2 and tags_of(tagged.pid) != [])
    snap = Snapshot(scope_all=True)
    sleepers = set(snap.kids[leader.pid])
    assert set(snap.tree(leader.pid, b"svc:abc", leader_is_ours=True)) == {leader.pid, *sleepers, tagged.pid}
    # a recycled leader pid: only the tag ties processes to the tree
    assert set(snap.tree(leader.pid, b"svc:abc", leader_is_ours=False)) == {tagged.pid}
    assert set(snap.tree(leader.pid, b"svc:other", leader_is_ours=False)) == set()
    # only qasup's own children are searched for tags when it adopts orphans
    assert tagged.pid in Snapshot(scope_all=False).tag_candidates()
    assert os.getpid() not in snap.tree(os.getpid(), b"svc:abc", leader_is_ours=True)


def test_snapshot_cache_reuses_a_fresh_scan() -> None:
    cache = SnapshotCache()
    first = cache.get(scope_all=True)
    assert first.by_pid and os.getpid() in first.by_pid
    if time.monotonic() - first.taken < first.max_age:
        assert cache.get(scope_all=True) is first
    time.sleep(first.max_age + 0.01)
    assert cache.get(scope_all=True) is not first


def test_tree_is_empty_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proctable, "all_stats", lambda: [])
    assert Snapshot(scope_all=True).tree(os.getpid(), b"x", leader_is_ours=True) == {}


def test_launch_args_check_and_tag(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="empty command"):
        launch_args([], tmp_path, {}, "t")
    with pytest.raises(SpawnError, match=r"working directory '.*/nope' does not exist"):
        launch_args(["true"], tmp_path / "nope", {}, "t")
    (tmp_path / "f").write_text("")
    with pytest.raises(SpawnError, match="is not a directory"):
        launch_args(["true"], tmp_path / "f", {}, "t")
    argv, cwd, env, tag = launch_args(("/bin/true",), tmp_path, {TAG_VARIABLE: "outer:1"}, "web")
    assert argv == ["/bin/true"] and cwd == str(tmp_path)
    name, _, rand = tag.partition(":")
    assert name == "web" and len(rand) == 16 and env[TAG_VARIABLE] == f"outer:1 {tag}"


@pytest.mark.parametrize(("argv", "message"), [
    (["qasup-no-such-command"], "command not found in PATH=/nowhere"),
    (["sub/missing"], "{cwd}/sub/missing: no such file"),
    (["{cwd}"], "{cwd}: is a directory"),
    (["{cwd}/plain"], "{cwd}/plain: permission denied (is it executable?)"),
    (["{cwd}/script"], "{cwd}/script: its #! interpreter or a library it needs was not found"),
])
def test_exec_errors_name_the_path_at_fault(tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "plain").write_text("")
    (tmp_path / "script").write_text("#!/no/such/interpreter\n")
    (tmp_path / "script").chmod(0o755)
    argv = [a.format(cwd=tmp_path) for a in argv]
    with pytest.raises(SpawnError) as caught:
        popen(argv, str(tmp_path), {"PATH": "/nowhere"}, None, None, None, (), None)
    assert str(caught.value) == f"cannot start {argv[0]!r}: {message.format(cwd=tmp_path)}"
