"""What ``qasup check`` must catch before anything runs (issue 11), beyond what the corpus can hold: FIFOs,
2 GB files, unreadable folders, deep stack folders; and the run-time side: an env file swapped for a FIFO
under a running daemon makes a start fail with a message, never a frozen daemon.

In-process tests of the readers first, then the CLI as a subprocess (the user's view).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from supervisor.config import dotenv
from supervisor.config.safefile import MAX_FILE_BYTES, FileRefused, file_problem, read_regular
from supervisor.config.spec import StackSpec
from supervisor.config.stack import SOCKET_PATH_MAX, default_socket
from supervisor.errors import ConfigError
from supervisor.plan.pipeline import PlanRequest, load_plan
from supervisor.protocol import SOCKET_ENV

from conftest import make_stack

FAST = 5.0
"""Seconds a check that must not wait on anything may take (a blocked read would take forever)."""


def _in_thread(fn, timeout: float = FAST):
    """``fn()`` run in a thread; fails the test (instead of hanging it) if it blocks."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:   # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked for {timeout}s"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out.get("value")


# ------------------------------------------------------------------------------------------ safefile


def test_read_regular_reads_a_regular_file_up_to_the_limit(tmp_path):
    f = tmp_path / "a.env"
    f.write_bytes(b"x" * MAX_FILE_BYTES)
    assert read_regular(f) == b"x" * MAX_FILE_BYTES
    f.write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    with pytest.raises(FileRefused, match=r"is 1048577 bytes, more than the 1 MiB"):
        read_regular(f)


@pytest.mark.parametrize("kind", ["fifo", "fifo-with-writer", "dir", "zero", "urandom", "sparse-2g"])
def test_read_regular_refuses_what_is_not_a_regular_file_at_once(tmp_path, kind):
    path = tmp_path / "x"
    writer = None
    if kind.startswith("fifo"):
        os.mkfifo(path)
        if kind == "fifo-with-writer":   # a writer that never writes: a blocking read would wait forever
            writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    elif kind == "dir":
        path.mkdir()
    elif kind == "sparse-2g":
        with open(path, "wb") as f:
            f.truncate(2 * 1024**3)
    else:
        path = Path(f"/dev/{kind}")
    try:
        with pytest.raises(FileRefused) as e:
            _in_thread(lambda: read_regular(path))
    finally:
        if writer is not None:
            os.close(writer)
    want = {"fifo": "a FIFO", "fifo-with-writer": "a FIFO", "dir": "a directory", "zero": "a character device",
            "urandom": "a character device", "sparse-2g": "2147483648 bytes"}[kind]
    assert want in str(e.value)


def test_file_problem_names_link_shapes(tmp_path):
    (tmp_path / "ok.toml").write_text("")
    os.symlink("ok.toml", tmp_path / "link.toml")
    os.symlink("gone.toml", tmp_path / "dangling.toml")
    os.symlink("loop.toml", tmp_path / "loop.toml")
    (tmp_path / "dir.toml").mkdir()
    os.mkfifo(tmp_path / "fifo.toml")
    assert file_problem(tmp_path / "ok.toml") is None
    assert file_problem(tmp_path / "link.toml") is None
    assert file_problem(tmp_path / "dangling.toml", "a unit file").startswith(
        "is a dangling symbolic link (to 'gone.toml'")
    assert file_problem(tmp_path / "loop.toml").startswith("is a symbolic link loop")
    assert file_problem(tmp_path / "dir.toml", "a unit file") == "is a directory, not a unit file"
    assert file_problem(tmp_path / "fifo.toml", "a unit file") == "is a FIFO, not a unit file"


# ------------------------------------------------------------------------------------------ dotenv


def test_dotenv_load_and_update_refuse_a_fifo_and_leave_it(tmp_path):
    fifo = tmp_path / ".env"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused, match="is a FIFO, not a regular file"):
        _in_thread(lambda: dotenv.load(fifo))
    with pytest.raises(FileRefused, match="is a FIFO"):
        _in_thread(lambda: dotenv.update(fifo, {"A": "1"}))
    assert fifo.is_fifo()   # never replaced by a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]   # no temporary file left


def test_dotenv_refuses_a_nul_byte_and_names_its_line(tmp_path):
    f = tmp_path / "a.env"
    f.write_bytes(b"A=1\nB=x\x00y\n")
    with pytest.raises(dotenv.DotenvError, match=r"a\.env:2: a NUL byte"):
        dotenv.load(f)


# ------------------------------------------------------------------------------------------ run-time resolution


def test_a_fifo_env_file_fails_the_resolution_with_a_message(tmp_path):
    """At each start (plan/resolve.py reads env files again) a FIFO is a clear failure, never a wait."""
    from supervisor.config.loader import load_config
    from supervisor.errors import Problems
    from supervisor.plan.resolve import resolve_unit

    root = make_stack(tmp_path, {"web": 'command = ["x"]\nenv_files = ["app.env"]\n'}, files={"app.env": "A=1\n"})
    cfg = load_config(cwd=root)
    (root / "app.env").unlink()
    os.mkfifo(root / "app.env")
    probs = Problems()
    r = _in_thread(lambda: resolve_unit(cfg.stack, cfg.units["web"], {}, {}, probs, environ={}))
    assert r is None
    [p] = probs.items
    assert p.key == "env_files"
    assert p.message.startswith(f"env file {root / 'app.env'} is a FIFO, not a regular file")


# ------------------------------------------------------------------------------------------ check, as a user runs it


def _check(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], int]:
    """``qasup check`` run under a fresh parent, so that the peak RSS of the check alone is known (KiB)."""
    full = {**os.environ, "QASUP_GPUS": "none", **(env or {})}
    if not env or SOCKET_ENV not in env:
        full.pop(SOCKET_ENV, None)
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "sys.stderr.write('\\nmaxrss=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "supervisor", "check", *args],
                       cwd=root, env=full, capture_output=True, text=True, timeout=30)
    head, _, rss = r.stderr.rpartition("\nmaxrss=")
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout, head.rstrip("\n") + "\n"), int(rss)


def _problems(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln and not ln.startswith("qasup: ")]


def test_check_refuses_fifos_and_huge_files_without_reading_them(tmp_path):
    """The stack's env file, a unit's env files and a unit file that are FIFOs or 2 GB: every one reported at
    once, in a few seconds, with the memory of an ordinary check (it once grew to 8.6 GB)."""
    root = make_stack(tmp_path, {"web": 'command = ["sleep", "1"]\nenv_files = ["pipe.env", "big.env"]\n'},
                      '[stack]\nenv_file = "stack.env"\n')
    os.mkfifo(root / "pipe.env")
    os.mkfifo(root / "stack.env")
    os.mkfifo(root / "services.d" / "api.toml")
    with open(root / "big.env", "wb") as f:
        f.truncate(2 * 1024**3)
    t0 = time.monotonic()
    r, rss_kib = _check(root)
    assert time.monotonic() - t0 < 20
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    found = _problems(r.stderr)
    assert any(p.endswith("services.d/web.toml: env_files: env file " + str(root / "pipe.env")
                          + " is a FIFO, not a regular file: list only regular files of at most 1 MiB in env_files")
               for p in found), found
    assert any("env_files: env file " + str(root / "big.env") + " is 2147483648 bytes" in p for p in found), found
    assert any("qasup.toml: stack.env_file: the stack's env file" in p and "is a FIFO" in p for p in found), found
    assert any(p.endswith("services.d/api.toml: -: is a FIFO, not a unit file") for p in found), found
    assert len(found) == 4, found
    assert rss_kib < 200 * 1024, f"qasup check peaked at {rss_kib} KiB"


def test_a_stack_file_that_is_a_fifo_is_refused(tmp_path):
    root = make_stack(tmp_path, {"web": 'command = ["sleep", "1"]\n'})
    os.mkfifo(root / "stack.toml")
    r, _ = _check(root, "--config", "stack.toml")
    assert r.returncode == 2 and _problems(r.stderr) == [f"{root / 'stack.toml'}: -: is a FIFO, not a regular file"]


def _without_dac_override():
    """Run as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: a mode 000 folder is then unreadable to
    root too (dropped from the bounding set, so the exec'd process never gets them back)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):   # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:   # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _check_unprivileged(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QASUP_GPUS": "none"}
    env.pop(SOCKET_ENV, None)
    pre = _without_dac_override if os.geteuid() == 0 else None
    try:
        return subprocess.run([sys.executable, "-m", "supervisor", "check"], cwd=root, env=env, text=True,
                              capture_output=True, timeout=30, preexec_fn=pre)
    except subprocess.SubprocessError as e:
        pytest.skip(f"cannot drop the capabilities that let root read any folder: {e}")


@pytest.mark.parametrize("folder", ["services.d", "services.d/web.d", "extra", "extra/web.d"])
def test_an_unreadable_folder_is_a_problem(tmp_path, folder):
    """``services.d``, a ``stack.dropins`` folder, or a drop-in folder qasup cannot list: a problem naming it
    (it was "no unit files here", or the drop-ins were silently not applied)."""
    root = make_stack(tmp_path, {"web": 'command = ["sleep", "1"]\n'}, '[stack]\ndropins = ["extra"]\n',
                      files={"services.d/web.d/10-a.toml": 'description = "a"\n',
                             "extra/web.d/10-b.toml": 'description = "b"\n'})
    (root / folder).chmod(0)
    try:
        r = _check_unprivileged(root)
    finally:
        (root / folder).chmod(0o755)
    if r.returncode == 0 and os.geteuid() == 0:
        pytest.skip("root reads mode 000 folders here even without CAP_DAC_OVERRIDE")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    found = _problems(r.stderr)
    assert len(found) == 1, found
    assert found[0].startswith(f"{root / folder}: -: cannot list this folder of ")
    assert "Permission denied" in found[0]


# ------------------------------------------------------------------------------------------ the control socket


def _deep(tmp_path: Path) -> Path:
    deep = tmp_path
    while len(os.fsencode(deep / ".qasup" / "qasup.sock")) <= SOCKET_PATH_MAX:
        deep = deep / ("d" * 20)
    return make_stack(deep, {"web": 'command = ["sleep", "1"]\n'})


def test_a_default_socket_path_too_long_is_reported_on_state_dir(tmp_path):
    root = _deep(tmp_path)
    r, _ = _check(root)
    assert r.returncode == 2
    [p] = _problems(r.stderr)
    sock = root / ".qasup" / "qasup.sock"
    assert p.startswith(f"{root}: stack.state_dir: the control socket {sock} would be {len(os.fsencode(sock))} "
                        "bytes long, more than the 107 a Unix socket path can hold")
    # an explicit socket is a run-time value: it replaces the default, which is then not checked
    assert _check(root, "--socket", str(tmp_path / "s.sock"))[0].returncode == 0
    assert _check(root, env={SOCKET_ENV: str(tmp_path / "s.sock")})[0].returncode == 0


def test_the_socket_check_in_process(tmp_path):
    root = _deep(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_plan(PlanRequest(cwd=root, environ={"QASUP_GPUS": "none"}))
    assert [p.key for p in e.value.problems] == ["stack.state_dir"]
    load_plan(PlanRequest(cwd=root, environ={"QASUP_GPUS": "none"}, socket=tmp_path / "s.sock"))
    load_plan(PlanRequest(cwd=root, environ={"QASUP_GPUS": "none", SOCKET_ENV: "/tmp/s.sock"}))
    short = StackSpec(root=root, state_dir=Path("/run/qasup"))
    assert default_socket(short) == Path("/run/qasup/qasup.sock")


# ------------------------------------------------------------------------------------------ end to end: a FIFO at restart

MARK = "qasup-hardening-fifo"


def _cli(root: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop(SOCKET_ENV, None)
    return subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _poll(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _state(root: Path, name: str) -> str | None:
    r = _cli(root, "status", "--json", name)
    try:
        return json.loads(r.stdout)["services"][0]["state"]
    except (ValueError, KeyError, IndexError):
        return None


def test_an_env_file_swapped_for_a_fifo_fails_the_restart_and_freezes_nothing(tmp_path):
    """`qasup up`; the reader's env file becomes a FIFO; `qasup restart reader` fails with a message saying so;
    `status` of the other service answers at once; SIGTERM stops the stack cleanly."""
    root = make_stack(tmp_path, {
        "reader": f'command = ["sh", "-c", "echo $$GREETING {MARK}; exec sleep 300"]\nenv_files = ["app.env"]\n'
                  '[restart]\npolicy = "never"\n',
        "other": f'command = ["sh", "-c", "echo other {MARK}; exec sleep 300"]\n',
    }, '[stack]\nname = "fifo"\nstop_budget = "10s"\n', files={"app.env": "GREETING=hello\n"})
    out = open(root / "up.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "up"], cwd=root, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _poll(lambda: _cli(root, "status").returncode == 0, 20, "the stack ready")
        (root / "app.env").unlink()
        os.mkfifo(root / "app.env")
        restart = subprocess.Popen([sys.executable, "-m", "supervisor", "restart", "reader"], cwd=root,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        other = _cli(root, "status", "other", timeout=10)
        assert other.returncode == 0 and time.monotonic() - t0 < 5, (other.stdout, other.stderr)
        _, err = restart.communicate(timeout=15)
        assert restart.returncode == 1, err
        assert f"env file {root / 'app.env'} is a FIFO, not a regular file" in err, err
        assert _state(root, "reader") == "failed"
        t0 = time.monotonic()
        assert _cli(root, "status", "other", timeout=10).returncode == 0 and time.monotonic() - t0 < 5
        text = (root / "up.out").read_text(errors="replace")
        assert f"env file {root / 'app.env'} is a FIFO, not a regular file" in text, text
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        text = (root / "up.out").read_text(errors="replace")
        assert "Traceback" not in text, text
        assert code in (0, 1), text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        out.close()
        left = subprocess.run(["pgrep", "-f", MARK], capture_output=True, text=True).stdout.split()
        for pid in left:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        assert not left, f"processes left behind: {left}"


# ------------------------------------------------------------------------------------------ log files


def test_units_may_share_a_device_as_log_file_but_not_a_file(tmp_path):
    """``/dev/null`` (no lines to tear, never rotated) may be every unit's log file; a regular file reached by
    two spellings (a symbolic link) may not."""
    root = make_stack(tmp_path, {
        "a": 'command = ["true"]\n[log]\nfile = "/dev/null"\n',
        "b": 'command = ["true"]\n[log]\nfile = "/dev/null"\n',
        "c": 'command = ["true"]\n[log]\nfile = "logs/c.log"\n',
        "d": 'command = ["true"]\n[log]\nfile = "alias/c.log"\n',
    }, files={"logs/c.log": ""})
    os.symlink("logs", root / "alias")
    with pytest.raises(ConfigError) as e:
        load_plan(PlanRequest(cwd=root, environ={"QASUP_GPUS": "none"}))
    [p] = e.value.problems
    assert (p.file, p.key) == (str(root / "services.d" / "d.toml"), "log.file")
    assert p.message.startswith(f"{root.resolve() / 'logs' / 'c.log'} is the log file of 2 units (c, d)")
