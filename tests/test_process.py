"""supervisor.proc: spawning, reaping, tree-wide stop, PDEATHSIG and PID-1 duties.

Real processes and real signals throughout; stand-ins live in tests/standins/proc_*.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from supervisor.proc.kernel import SpawnError, exit_code, set_subreaper
from supervisor.proc.proctable import TAG_VARIABLE
from supervisor.proc.reaper import Child, Reaper
from supervisor.proc.run import RunTimeout, run_to_completion
from supervisor.proc.stop import terminate
from supervisor.proc.tree import members

from enginehelp import unshare_problem

STANDINS = Path(__file__).resolve().parent / "standins"
PY = sys.executable
SLACK = 1.5  # seconds allowed beyond a stop timeout on a loaded 2-core machine

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _restore_subreaper() -> None:
    """Reaper.open makes the test process a subreaper; leave it as it was for other test files."""
    yield
    set_subreaper(False)


def standin(name: str, *args: object) -> list[str]:
    return [PY, str(STANDINS / f"proc_{name}.py"), *map(str, args)]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] not in (b"Z", b"X")


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.01)


async def read_json_line(fd: int, timeout: float = 10.0) -> dict:
    buf = b""
    with anyio.fail_after(timeout):
        while b"\n" not in buf:
            await anyio.wait_readable(fd)
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError(f"pipe closed before a full line: {buf!r}")
            buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


@asynccontextmanager
async def reaper_with_cleanup() -> AsyncIterator[tuple[Reaper, list[Child]]]:
    """A Reaper plus a list of children that are SIGKILLed (whole trees) however the test ends."""
    async with Reaper.open() as reaper:
        children: list[Child] = []
        try:
            yield reaper, children
        finally:
            with anyio.CancelScope(shield=True), anyio.fail_after(10):
                for child in children:
                    await terminate(child, signal.SIGKILL, 0)


def spawn(reaper: Reaper, children: list[Child], argv: list[str], *, stdout: int | None = None, tag: str = "t",
          **kw) -> Child:
    child = reaper.spawn(argv, cwd=kw.pop("cwd", STANDINS), env=kw.pop("env", dict(os.environ)), stdout=stdout,
                         stderr=kw.pop("stderr", None), tag=tag, **kw)
    children.append(child)
    return child


async def spawn_reporting(reaper: Reaper, children: list[Child], argv: list[str], **kw) -> tuple[Child, dict]:
    """Spawn a stand-in that prints one JSON line on stdout; return the child and that line."""
    read_fd, write_fd = os.pipe()
    try:
        child = spawn(reaper, children, argv, stdout=write_fd, **kw)
        os.close(write_fd)
        write_fd = -1
        return child, await read_json_line(read_fd)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


# ------------------------------------------------------------------------------------------
# exit codes and reaping


def test_exit_code_from_real_statuses() -> None:
    statuses = []
    for argv in (["/bin/sh", "-c", "exit 7"], ["/bin/sh", "-c", "kill -KILL $$"], ["/bin/sh", "-c", "kill -TERM $$"]):
        pid = os.posix_spawn(argv[0], argv, dict(os.environ))
        statuses.append(os.waitpid(pid, 0)[1])
    assert [exit_code(s) for s in statuses] == [7, 137, 143]


async def test_exit_codes_survive_an_orphan_storm() -> None:
    async with reaper_with_cleanup() as (reaper, children):
        assert reaper.subreaper, "PR_SET_CHILD_SUBREAPER should work on Linux"
        victim = spawn(reaper, children, standin("sleep"), tag="victim")
        storm = spawn(reaper, children, standin("storm", 1000, 7), tag="storm")
        await wait_until(lambda: reaper.orphans_reaped >= 100, 10, "the storm to start")
        quick = spawn(reaper, children, standin("exit", 7), tag="quick")  # exits in the middle of the storm
        os.kill(victim.pid, signal.SIGKILL)
        with anyio.fail_after(15):
            assert await victim.wait() == 137
            assert await quick.wait() == 7
            assert await storm.wait() == 7
        await wait_until(lambda: reaper.orphans_reaped >= 1000, 10, "1000 orphans reaped")
        assert reaper.running() == []


async def test_fast_exiting_child_is_not_lost() -> None:
    async with reaper_with_cleanup() as (reaper, children):
        kids = [spawn(reaper, children, ["/bin/sh", "-c", f"exit {n}"]) for n in range(1, 21)]
        # Block the event loop so every child exits (and SIGCHLD fires) before the reaper runs.
        deadline = time.monotonic() + 5
        while any(alive(k.pid) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.005)
        orphans_before = reaper.orphans_reaped
        with anyio.fail_after(5):
            codes = [await k.wait() for k in kids]
        assert codes == list(range(1, 21))
        assert reaper.orphans_reaped == orphans_before


async def test_spawn_async_keeps_exit_codes_of_children_that_exit_before_registration() -> None:
    """spawn_async forks in a worker thread; the reaper may collect a child's status before the spawn
    returns. Those statuses are held while spawns are in flight, never counted as orphans."""
    async with reaper_with_cleanup() as (reaper, children):
        async def one(n: int, out: dict[int, Child]) -> None:
            out[n] = await reaper.spawn_async(["/bin/sh", "-c", f"exit {n}"], cwd=STANDINS, env=dict(os.environ),
                                             stdout=None, stderr=None, tag="fast")
        kids: dict[int, Child] = {}
        async with anyio.create_task_group() as tg:   # many spawns in flight at once, children exiting meanwhile
            for n in range(1, 41):
                tg.start_soon(one, n, kids)
        with anyio.fail_after(10):
            codes = {n: await k.wait() for n, k in kids.items()}
        assert codes == {n: n for n in range(1, 41)}
        assert reaper.orphans_reaped == 0 and reaper._held == {} and reaper._in_flight == 0
        assert reaper.running() == []


async def test_spawn_async_errors_and_orphans_during_spawns() -> None:
    async with reaper_with_cleanup() as (reaper, children):
        with pytest.raises(SpawnError, match="command not found"):
            await reaper.spawn_async(["qasup-no-such-command"], cwd=STANDINS, env=dict(os.environ), stdout=None,
                                     stderr=None, tag="t")
        assert reaper._in_flight == 0 and reaper.running() == []
        # orphans reaped while spawns are in flight are held, then counted as orphans once none is in flight
        storm = spawn(reaper, children, standin("storm", 200, 0), tag="storm")
        for _ in range(10):
            children.append(await reaper.spawn_async(["/bin/true"], cwd=STANDINS, env=dict(os.environ),
                                                     stdout=None, stderr=None, tag="t"))
        with anyio.fail_after(15):
            assert await storm.wait() == 0
            assert [await c.wait() for c in children[1:]] == [0] * 10
        await wait_until(lambda: reaper.orphans_reaped >= 200, 10, "200 orphans reaped")
        assert reaper._held == {}


async def test_spawn_async_does_not_stall_the_event_loop() -> None:
    """While the child gets to exec (slow when the CPUs are busy), other tasks keep running."""
    busy = [subprocess.Popen([PY, "-c", "import time\nt = time.time()\nwhile time.time() - t < 4: pass"])
            for _ in range(3)]
    try:
        async with reaper_with_cleanup() as (reaper, children):
            ticks = 0
            done = anyio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not done.is_set():
                    ticks += 1
                    await anyio.sleep(0)

            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                for _ in range(10):
                    before = ticks
                    children.append(await reaper.spawn_async(["/bin/true"], cwd=STANDINS, env=dict(os.environ),
                                                             stdout=None, stderr=None, tag="t"))
                    assert ticks > before   # the loop ran other tasks during the spawn
                done.set()
            with anyio.fail_after(10):
                assert [await c.wait() for c in children] == [0] * 10
    finally:
        for b in busy:
            b.kill()
            b.wait()


async def test_an_exit_during_a_spawn_in_flight_is_checked_without_a_scan_of_proc(monkeypatch) -> None:
    """A spawn in flight has forked a child that the reaper does not know yet: an exit checked for leftovers
    meanwhile would take it for an orphan and scan all of /proc (milliseconds in the event loop). Once
    ``spawns_settled`` says none is in flight, every child of this process is known, and the fast path answers."""
    from supervisor.proc import tree
    from supervisor.proc.proctable import own_children

    go = threading.Event()
    async with reaper_with_cleanup() as (reaper, children):
        first = await reaper.spawn_async(["/bin/true"], cwd=STANDINS, env=dict(os.environ), stdout=None,
                                         stderr=None, tag="first")
        children.append(first)
        with anyio.fail_after(5):
            assert await first.wait() == 0
        assert await reaper.spawns_settled(0) is True   # none in flight: at once
        launch = reaper._launch

        def held_launch(*args):
            out = launch(*args)    # the child exists, the spawn has not returned: what the check must not miss
            go.wait(10)
            return out

        monkeypatch.setattr(reaper, "_launch", held_launch)

        async def second() -> None:
            children.append(await reaper.spawn_async([PY, "-c", "import time; time.sleep(30)"], cwd=STANDINS,
                                                     env=dict(os.environ), stdout=None, stderr=None, tag="second"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await wait_until(lambda: reaper._in_flight == 1, 5, "the second spawn in flight")
            await wait_until(lambda: any(not reaper.is_running(p) for p in own_children() or ()), 5,
                             "its child forked, not yet known")
            assert await reaper.spawns_settled(0.05) is False   # still in flight: the caller would scan
            tg.start_soon(anyio.to_thread.run_sync, go.set)
            with anyio.fail_after(10):
                assert await reaper.spawns_settled(10) is True
            kids = own_children()
            assert kids and all(reaper.is_running(pid) for pid in kids)
            monkeypatch.setattr(tree, "members", lambda child: pytest.fail("anything_left scanned /proc"))
            assert tree.anything_left(first) is False


async def test_spawn_runs_in_own_session_with_cwd_env_and_tag(tmp_path: Path) -> None:
    async with reaper_with_cleanup() as (reaper, children):
        env = {"PATH": os.environ["PATH"], "GREETING": "hello world", TAG_VARIABLE: "outer:1"}
        child, info = await spawn_reporting(reaper, children, standin("env", "GREETING", TAG_VARIABLE, "HOME"),
                                            cwd=tmp_path, env=env, tag="svc")
        assert await child.wait() == 0
        assert info["pid"] == child.pid == info["sid"] == info["pgid"]
        assert info["cwd"] == str(tmp_path)
        assert child.tag.startswith("svc:") and len(child.tag) > len("svc:")
        assert info["env"] == {"GREETING": "hello world", TAG_VARIABLE: f"outer:1 {child.tag}", "HOME": None}
        assert child.started <= time.monotonic()


@pytest.mark.parametrize(
    "case",
    ["missing-name", "missing-path", "not-executable", "bad-interpreter", "bad-cwd", "cwd-is-file", "directory",
     "empty"],
)
async def test_spawn_errors_are_clear(tmp_path: Path, case: str) -> None:
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    orphan_script = tmp_path / "orphan.sh"
    orphan_script.write_text("#!/nonexistent/interpreter\n")
    orphan_script.chmod(stat.S_IRWXU)
    argv, cwd, expect = {
        "missing-name": (["qasup-no-such-command"], tmp_path, "'qasup-no-such-command': command not found in PATH="),
        "missing-path": (["nope/bin"], tmp_path, f"{tmp_path}/nope/bin: no such file"),
        "not-executable": ([str(script)], tmp_path, f"{script}: permission denied"),
        "bad-interpreter": ([str(orphan_script)], tmp_path, f"{orphan_script}: its #! interpreter"),
        "bad-cwd": (["/bin/true"], tmp_path / "gone", f"working directory '{tmp_path}/gone' does not exist"),
        "cwd-is-file": (["/bin/true"], script, f"working directory '{script}' is not a directory"),
        "directory": ([str(tmp_path)], tmp_path, f"{tmp_path}: is a directory"),
        "empty": ([], tmp_path, "empty command"),
    }[case]
    async with reaper_with_cleanup() as (reaper, children):
        with pytest.raises(SpawnError) as info:
            spawn(reaper, children, argv, cwd=cwd)
        assert expect in str(info.value)
        assert info.value.__cause__ is None and not isinstance(info.value, OSError)
        assert reaper.running() == []


async def test_errors_inside_the_reaper_block_propagate_unwrapped() -> None:
    with pytest.raises(SpawnError):
        async with Reaper.open() as reaper:
            reaper.spawn([], cwd=STANDINS, env={}, stdout=None, stderr=None, tag="t")


async def test_spawn_from_another_thread_is_refused() -> None:
    async with reaper_with_cleanup() as (reaper, children):
        with pytest.raises(RuntimeError, match="event-loop thread"):
            await anyio.to_thread.run_sync(lambda: spawn(reaper, children, ["/bin/true"]))


# ------------------------------------------------------------------------------------------
# stopping whole trees


async def test_terminate_kills_stubborn_setsid_and_orphaned_descendants() -> None:
    async with reaper_with_cleanup() as (reaper, children):
        child, info = await spawn_reporting(reaper, children, standin("tree", "ignore", "setsid", "orphan"))
        ignore, setsid, orphan = (info["members"][mode] for mode in ("ignore", "setsid", "orphan"))
        assert info["leader"] == child.pid
        assert os.getsid(setsid) == setsid and os.getsid(orphan) == orphan
        assert members(child) == {child.pid, ignore, setsid, orphan}
        begin = time.monotonic()
        assert await terminate(child, signal.SIGTERM, 0.5) == 143
        took = time.monotonic() - begin
        assert 0.5 <= took < 0.5 + SLACK, took
        assert not any(alive(pid) for pid in (child.pid, ignore, setsid, orphan))
        assert members(child) == set()


async def test_terminate_is_quick_for_a_cooperative_service() -> None:
    async with reaper_with_cleanup() as (reaper, children):
        child, _ = await spawn_reporting(reaper, children, standin("tree"))
        begin = time.monotonic()
        assert await terminate(child, signal.SIGTERM, 10) == 143
        assert time.monotonic() - begin < SLACK


async def test_members_after_the_leader_is_gone_found_by_tag() -> None:
    async with reaper_with_cleanup() as (reaper, children):
        child, info = await spawn_reporting(reaper, children, standin("tree", "orphan", "--exit"))
        orphan = info["members"]["orphan"]
        with anyio.fail_after(5):
            assert await child.wait() == 0
        # a new session, its own group, parent is the test process: only the tag ties it to the service
        assert members(child) == {orphan}
        begin = time.monotonic()
        assert await terminate(child, signal.SIGTERM, 0.3) == 0
        assert time.monotonic() - begin < 0.3 + SLACK
        assert not alive(orphan)


async def test_anything_left_fast_path_agrees_with_a_full_scan() -> None:
    """After the leader exits: an orphan that escaped by setsid is seen (it was re-parented to us), and a
    service that left nothing behind is known to be gone without a scan of /proc."""
    from supervisor.proc.tree import anything_left

    async with reaper_with_cleanup() as (reaper, children):
        assert reaper.subreaper
        child, info = await spawn_reporting(reaper, children, standin("tree", "orphan", "--exit"))
        with anyio.fail_after(5):
            assert await child.wait() == 0
        assert anything_left(child) and members(child) == {info["members"]["orphan"]}
        await terminate(child, signal.SIGTERM, 0.3)
        assert not anything_left(child)
        plain = reaper.spawn(["true"], cwd="/", env=dict(os.environ), stdout=None, stderr=None, tag="plain")
        children.append(plain)
        with anyio.fail_after(5):
            assert await plain.wait() == 0
        assert not anything_left(plain) and not members(plain)


async def test_pdeathsig_kills_the_service_when_qasup_is_killed() -> None:
    async with reaper_with_cleanup() as (reaper, children):
        helper, info = await spawn_reporting(reaper, children, standin("parent"), tag="mini-qasup")
        service = info["child"]
        assert alive(service)
        os.kill(helper.pid, signal.SIGKILL)
        with anyio.fail_after(5):
            assert await helper.wait() == 137
        await wait_until(lambda: not alive(service), 3, "the service to die with its parent")


async def test_without_pdeathsig_the_service_outlives_its_parent() -> None:
    """The counter-check of the test above (and tag inheritance: the orphan is still found)."""
    async with reaper_with_cleanup() as (reaper, children):
        helper, info = await spawn_reporting(reaper, children, standin("parent", "--no-pdeathsig"), tag="mini-qasup")
        service = info["child"]
        os.kill(helper.pid, signal.SIGKILL)
        with anyio.fail_after(5):
            assert await helper.wait() == 137
        await anyio.sleep(0.2)  # negative check: give a (wrong) parent-death signal time to land
        assert alive(service)
        assert members(helper) == {service}  # its environment carries the helper's tag
        await terminate(helper, signal.SIGTERM, 2)
        assert not alive(service)


# ------------------------------------------------------------------------------------------
# run_to_completion


async def test_run_to_completion_captures_output_and_code(tmp_path: Path) -> None:
    async with reaper_with_cleanup() as (reaper, _):
        code, output = await run_to_completion(reaper, standin("env", "--exit", 3, "X"), cwd=tmp_path,
                                               env={**os.environ, "X": "1"}, timeout=10, tag="prepare")
        assert code == 3
        lines = output.decode().splitlines()
        assert json.loads(lines[0])["env"] == {"X": "1"} and lines[1] == "to-stderr"


async def test_run_to_completion_keeps_only_the_tail(tmp_path: Path) -> None:
    async with reaper_with_cleanup() as (reaper, _):
        code, output = await run_to_completion(reaper, standin("env", "--bulk", 300_000), cwd=tmp_path,
                                               env=dict(os.environ), timeout=10, tag="probe", output_limit=1000)
        assert code == 0 and len(output) == 1000 and output.endswith(b"to-stderr\n")


async def test_run_to_completion_timeout_stops_the_tree() -> None:
    async with reaper_with_cleanup() as (reaper, _):
        begin = time.monotonic()
        with pytest.raises(RunTimeout) as info:
            await run_to_completion(reaper, standin("tree", "ignore", "setsid"), cwd=STANDINS,
                                    env=dict(os.environ), timeout=0.5, tag="prepare", stop_timeout=0.3)
        assert isinstance(info.value, TimeoutError)
        assert 0.8 <= time.monotonic() - begin < 0.8 + SLACK
        tree = json.loads(info.value.output.decode().splitlines()[0])
        assert not any(alive(pid) for pid in (tree["leader"], *tree["members"].values()))


async def test_run_to_completion_cancelled_from_outside_stops_the_tree() -> None:
    async with reaper_with_cleanup() as (reaper, children):
        with anyio.move_on_after(0.5):
            await run_to_completion(reaper, standin("tree", "ignore"), cwd=STANDINS, env=dict(os.environ),
                                    timeout=30, tag="prepare", stop_timeout=0.2)
        assert reaper.running() == []
        assert not [pid for pid in _pids_tagged("prepare:") if alive(pid)]


def _pids_tagged(prefix: str) -> list[int]:
    """Processes whose environment carries a QASUP_INSTANCE tag starting with ``prefix``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"{TAG_VARIABLE}={prefix}".encode() in environ:
                found.append(int(entry.name))
    return found


async def test_run_to_completion_stops_leftovers() -> None:
    async with reaper_with_cleanup() as (reaper, _):
        code, output = await run_to_completion(reaper, standin("tree", "orphan", "--exit"), cwd=STANDINS,
                                               env=dict(os.environ), timeout=10, tag="prepare", stop_timeout=0.3)
        assert code == 0
        orphan = json.loads(output.decode())["members"]["orphan"]
        assert not alive(orphan)


# ------------------------------------------------------------------------------------------
# as PID 1 of a PID namespace


@pytest.fixture(scope="module")
def pid_namespace() -> list[str]:
    problem = unshare_problem()
    if problem:
        pytest.skip(problem)
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def test_pid1_reaps_an_orphan_storm_and_keeps_exit_codes(pid_namespace: list[str]) -> None:
    done = subprocess.run([*pid_namespace, *standin("pid1", "storm", 1000)], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout.decode().splitlines()[-1])
    assert report == {"pid": 1, "codes": [7, 7], "orphans": 1000}


def test_pid1_handles_sigterm(pid_namespace: list[str]) -> None:
    outer = subprocess.Popen([*pid_namespace, *standin("pid1", "sigterm")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert json.loads(outer.stdout.readline()) == {"pid": 1, "ready": True}
        # the namespace's PID 1, as seen from here: unshare's only child
        init = int(Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()[0])
        os.kill(init, signal.SIGTERM)  # ignored unless PID 1 installed a handler
        stdout, stderr = outer.communicate(timeout=10)
        assert outer.returncode == 0, stderr.decode()
        assert json.loads(stdout) == {"stopped": 143}
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()
