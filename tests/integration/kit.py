"""What the integration tests share: a private work folder per test, ``qasup up`` run as a child of the test or as
PID 1 of a PID namespace (``unshare --pid --fork --mount-proc``), and a leftover check that does not trust a
process's environment (nginx and redis overwrite theirs with their process title).

A process belongs to a test when any of these holds: its command line names the test's work folder, its
current folder lies inside it, or its environment carries the test's marker (``QASUP_TEST_MARK``). Every unit of
the suite runs its server with its cwd or a path argument in the work folder, so each server process is found
even after it rewrote argv and environ (nginx's workers, redis, postgres' backends) or called chdir("/")
(``memcached -d``). Ports are checked as well: a port qasup let go must be free to bind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ports import free_port  # noqa: F401  (re-exported: the suite imports it from here)

REPO = Path(__file__).resolve().parents[2]
UNITS = Path(__file__).resolve().parent / "units"
PY = sys.executable
MARK_VAR = "QASUP_TEST_MARK"
PID1 = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
# A declared GPU for the QAnything units (their plan needs one for a local LLM); nothing here uses it.
ONE_4090 = json.dumps([{"index": 0, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564,
                        "memory_free_mib": 24000, "compute_capability": "8.9"}])
START_TIMEOUT = 120.0   # seconds a server may take to be ready on a loaded 2-core machine (Sanic's 4 workers: ~10 s)


def poll(pred: Callable[[], Any], timeout: float, what: str | Callable[[], str], pause: float = 0.05) -> Any:
    """Call ``pred`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(pause)


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:PORT (a bind succeeds; TIME_WAIT connections do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def unshare_problem() -> str | None:
    """Why a PID-namespace run cannot happen here (None when ``unshare --pid --fork --mount-proc`` works)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    r = subprocess.run([*PID1, "true"], capture_output=True, timeout=30)
    if r.returncode != 0:
        return f"unshare --pid --fork --mount-proc is not permitted here: {r.stderr.decode().strip()}"
    return None


# ---------------------------------------------------------------------------------------------------- /proc

@dataclass(frozen=True)
class Proc:
    pid: int
    start: int        # start time in clock ticks: (pid, start) names one process even across pid reuse
    ppid: int
    uid: int
    exe: str
    argv: str
    cwd: str
    environ: bytes

    def __str__(self) -> str:
        return f"pid {self.pid} (uid {self.uid}, cwd {self.cwd}): {self.argv[:200]}"

    @property
    def ident(self) -> tuple[int, int]:
        return self.pid, self.start


def read_proc(pid: int) -> Proc | None:
    """One live (non-zombie) process, or None."""
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/stat", "rb") as f:
            stat = f.read()
        rest = stat[stat.rfind(b")") + 2:].split()
        if rest[0] in (b"Z", b"X"):
            return None
        with open(f"{base}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"{base}/status") as f:
            uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        try:
            with open(f"{base}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            environ = b""
        try:
            exe = os.readlink(f"{base}/exe")
        except OSError:
            exe = ""
        try:
            cwd = os.readlink(f"{base}/cwd")
        except OSError:
            cwd = ""
    except (OSError, StopIteration, IndexError):
        return None
    return Proc(pid, int(rest[19]), int(rest[1]), uid, exe, argv, cwd, environ)


def all_procs() -> list[Proc]:
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and (p := read_proc(int(name))) is not None:
            out.append(p)
    return out


def host_pid(ns_pid: int, among: Iterable[Proc]) -> int | None:
    """The pid, as seen here, of the process that is ``ns_pid`` in its own (innermost) PID namespace."""
    for p in among:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if int(nspid[-1]) == ns_pid:
            return p.pid
    return None


# ---------------------------------------------------------------------------------------------------- work

class Work:
    """A test's private folder under /tmp (mode 0755, so that servers that drop root can reach their part of it)
    and the marker its qasup carries; ``stack`` is the qasup stack folder inside it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qasup-it-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.marker = uuid.uuid4().hex
        self.stack = self.dir / "stack"
        (self.stack / "services.d").mkdir(parents=True)
        self.daemons: list[Daemon] = []

    # ---------------------------------------------------------------- what belongs to the test

    def belongs(self, p: Proc) -> bool:
        folder = str(self.dir)
        return (folder in p.argv or p.cwd == folder or p.cwd.startswith(folder + "/")
                or f"{MARK_VAR}={self.marker}".encode() in p.environ.split(b"\0"))

    def procs(self, exclude: Iterable[int] = ()) -> list[Proc]:
        skip = set(exclude)
        return [p for p in all_procs() if p.pid not in skip and self.belongs(p)]

    def nothing_left(self, timeout: float = 0.0, exclude: Callable[[], Iterable[int]] = tuple,
                     ports: Iterable[int] = (), what: str = "") -> None:
        """Assert that no process of the test is left (apart from ``exclude()``) and every port is free; keep
        looking for up to ``timeout`` seconds (0: now) for what is still on its way out."""
        ports = list(ports)

        def check() -> tuple[list[Proc], list[int]]:
            return self.procs(exclude()), [p for p in ports if not port_free(p)]

        deadline = time.monotonic() + timeout
        left, busy = check()
        while (left or busy) and time.monotonic() < deadline:
            time.sleep(0.05)
            left, busy = check()
        msg = f"{what}: " if what else ""
        assert not left, msg + "processes left:\n" + "\n".join(map(str, left)) + self.outputs()
        assert not busy, msg + f"ports still taken: {busy}" + self.outputs()

    def outputs(self) -> str:
        return "".join(f"\nqasup output:\n{d.out}" for d in self.daemons)

    # ---------------------------------------------------------------- the stack

    def stack_file(self, text: str) -> None:
        (self.stack / "qasup.toml").write_text(textwrap.dedent(text))

    def write(self, rel: str, text: str) -> Path:
        p = self.stack / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p

    def add_unit(self, name: str, source: Path | None = None) -> Path:
        """Copy a unit file (default ``units/NAME.toml``) into the stack's services.d/ as NAME.toml."""
        dest = self.stack / "services.d" / f"{name}.toml"
        shutil.copyfile(source or UNITS / f"{name}.toml", dest)
        return dest

    def daemon(self, env: Mapping[str, str] | None = None, pid1: bool = False) -> Daemon:
        d = Daemon(self, dict(env or {}), pid1)
        self.daemons.append(d)
        return d

    # ---------------------------------------------------------------- teardown

    def cleanup(self) -> list[str]:
        """Stop what a failed test left: each daemon (SIGTERM, then SIGKILL), then SIGKILL every process of the
        test. Returns a description of what had to be killed."""
        left: list[str] = []
        for d in self.daemons:
            left += d.cleanup()
        deadline = time.monotonic() + 5
        procs = self.procs()
        while procs and time.monotonic() < deadline:
            time.sleep(0.05)   # a stopped tree may still be on its way out
            procs = self.procs()
        for p in procs:
            left.append(str(p))
            try:
                os.kill(p.pid, signal.SIGKILL)
            except OSError:
                pass
        for d in self.daemons:
            d.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return left


class Daemon:
    """One ``qasup up`` in the work's stack folder, in its own session; with ``pid1`` as PID 1 of a new PID
    namespace. Its output goes to ``qasup.out`` in the work folder."""

    def __init__(self, work: Work, env: dict[str, str], pid1: bool) -> None:
        self.work = work
        self.pid1 = pid1
        self.env = {**os.environ, "QASUP_GPUS": "none", MARK_VAR: work.marker, "PYTHONUNBUFFERED": "1", **env}
        self.env.pop("QASUP_SOCKET", None)
        self.out_path = work.dir / f"qasup-{len(work.daemons)}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._qasup: int | None = None
        self._outf: Any = None

    def start(self, *args: str) -> Daemon:
        self._outf = open(self.out_path, "wb")
        argv = [*(PID1 if self.pid1 else ()), PY, "-m", "supervisor", "up", *args]
        self.proc = subprocess.Popen(argv, cwd=self.work.stack, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._outf, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def out(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def qasup_pid(self) -> int:
        """qasup's pid as seen here (with ``pid1``: unshare's child, PID 1 inside)."""
        assert self.proc is not None
        if not self.pid1:
            return self.proc.pid
        if self._qasup is None:
            def child() -> int | None:
                try:
                    kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
                except OSError:
                    return None
                return int(kids[0]) if kids else None
            self._qasup = poll(child, 30, "unshare's child (qasup as PID 1)")
        return self._qasup

    def own_pids(self) -> set[int]:
        """qasup's own processes while it runs: unshare, qasup, and its helpers (the guardian): a direct child
        of qasup with an intact environment whose ``QASUP_INSTANCE`` tag (if any) names no service."""
        if self.proc is None or self.proc.poll() is not None:
            return set()
        own = {self.proc.pid, self.qasup_pid}
        mark = f"{MARK_VAR}={self.work.marker}".encode()
        services = {f.stem.encode() for f in (self.work.stack / "services.d").glob("*.toml")}
        for p in all_procs():   # by ppid: a child forked by one of qasup's threads is listed under that thread
            env = p.environ.split(b"\0")
            if p.ppid != self.qasup_pid or mark not in env:
                continue
            tag = next((v for v in env if v.startswith(b"QASUP_INSTANCE=")), b"=")
            if tag.split(b"=", 1)[1].rsplit(b":", 1)[0] not in services:
                own.add(p.pid)
        return own

    def service_procs(self) -> list[Proc]:
        """The processes of the test that are not qasup's own: what its services run."""
        return self.work.procs(self.own_pids())

    # ---------------------------------------------------------------- the command line

    def cli(self, *args: str, timeout: float = START_TIMEOUT + 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "supervisor", *args], cwd=self.work.stack, env=self.env, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *args: str, timeout: float = START_TIMEOUT + 30) -> str:
        r = self.cli(*args, timeout=timeout)
        assert r.returncode == 0, (f"qasup {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout}\n"
                                   f"stderr: {r.stderr}\nqasup up output:\n{self.out}")
        return r.stdout

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json", timeout=30)
        assert r.returncode in (0, 3), f"status exited {r.returncode}: {r.stderr}\n{self.out}"
        return json.loads(r.stdout)

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["services"] if s["name"] == name)

    def wait_ready(self, *names: str, timeout: float = START_TIMEOUT) -> None:
        """Until the services are ready (``qasup wait-ready``, which also waits for the daemon's socket)."""
        self.ok("wait-ready", *names, "--timeout", f"{timeout:g}s", timeout=timeout + 30)

    def events(self) -> list[dict[str, Any]]:
        try:
            text = (self.work.stack / ".qasup" / "events.jsonl").read_text()
        except FileNotFoundError:
            return []
        evs = []
        for line in text.splitlines():
            try:
                evs.append(json.loads(line))
            except ValueError:
                pass
        return evs

    def states(self, name: str) -> list[str]:
        return [e["state"] for e in self.events() if e.get("service") == name and "state" in e]

    # ---------------------------------------------------------------- ends

    def kill9(self) -> None:
        """SIGKILL qasup itself (with ``pid1`` the namespace's init: the kernel then kills the namespace)."""
        os.kill(self.qasup_pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(30)

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM to qasup (``docker stop``): an ordered shutdown; its exit code."""
        assert self.proc is not None
        os.kill(self.qasup_pid, signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 90) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"qasup up did not exit within {timeout}s; output:\n{self.out}") from None

    def cleanup(self) -> list[str]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            os.kill(self.qasup_pid, signal.SIGTERM)
            self.proc.wait(60)
            return []
        except (OSError, AssertionError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            return [f"qasup up (pid {self.proc.pid}) ignored SIGTERM for 60 s"]

    def close(self) -> None:
        if self._outf is not None:
            self._outf.close()
