"""Shared pieces of scenario 8 (real programs): the result type, finding processes in ``/proc``, small waits,
and the two daemons' stacks for one service called ``svc``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from benchkit.daemons import Daemon, Qasup, Supervisord
from benchkit.procs import WaitTimeout, timed_run
from benchkit.scenarios import Ctx, Result


class RealResult(Result):
    """Samples as usual, plus one text outcome per (row, daemon): ``facts[row][who]``."""

    def __init__(self, sid: int, title: str) -> None:
        super().__init__(sid, title)
        self.facts: dict[str, dict[str, str]] = {}
        self.misses: list[str] = []      # where qasup does not do what the brief's semantics say

    def put(self, row: str, who: str, text: str) -> None:
        self.facts.setdefault(row, {})[who] = text

    def to_json(self) -> dict:
        return {**super().to_json(), "facts": self.facts, "misses": self.misses}


# ---------------------------------------------------------------------------------------------- /proc

def _table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) of every live process (zombies left out)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                head, tail = f.read().rsplit(b")", 1)
        except OSError:
            continue
        fields = tail.split()
        if fields[0] in (b"Z", b"X"):
            continue
        out[int(entry)] = (int(fields[1]), head.split(b"(", 1)[1].decode("utf-8", "replace"))
    return out


def _read(pid: int, what: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def members(root: Callable[[int, str], bool]) -> set[int]:
    """Live processes for which ``root(pid, comm)`` holds, and all their descendants."""
    table = _table()
    found = {pid for pid, (_, comm) in table.items() if pid != os.getpid() and root(pid, comm)}
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for kid in kids.get(todo.pop(), []):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def nginx_of(prefix: Path) -> Callable[[int, str], bool]:
    needle = str(prefix).encode()
    return lambda pid, comm: comm == "nginx" and needle in _read(pid, "cmdline")


def app_of(tag: str) -> Callable[[int, str], bool]:
    needle = b"\0BENCH_APP=" + tag.encode() + b"\0"
    return lambda pid, comm: needle in b"\0" + _read(pid, "environ") + b"\0"


def count_until_zero(root: Callable[[int, str], bool], timeout: float) -> int:
    """Poll until no such process is left or ``timeout`` passed; how many are left."""
    deadline = time.monotonic() + timeout
    while True:
        n = len(members(root))
        if n == 0 or time.monotonic() >= deadline:
            return n
        time.sleep(0.05)


def kill_all(root: Callable[[int, str], bool]) -> int:
    killed = 0
    for _ in range(50):
        pids = members(root)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return killed


# ---------------------------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read()


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"no {what} within {timeout:g}s")
        time.sleep(interval)


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def log_count(path: Path, needle: bytes, start: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read().count(needle)
    except FileNotFoundError:
        return 0


def qstatus(q: Qasup, name: str) -> dict:
    code, _, out = q.status(name, "--json")
    if "{" not in out:
        raise RuntimeError(f"qasup status {name} --json exited {code}: {out.strip()[-300:]}")
    for s in json.loads(out[out.index("{"):])["services"]:
        if s["name"] == name:
            return s
    raise RuntimeError(f"qasup status shows no service {name}")


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith(("ch", "s")) else "s")


def ensure_nginx(log) -> str | None:
    """The nginx binary, installed with apt-get when missing (root only); None with the reason logged."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("  nginx is not installed and this is not root with apt-get: nginx case skipped")
        return None
    for pkg in ("nginx-light", "nginx"):
        log(f"  installing {pkg} with apt-get")
        r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o",
                            "DPkg::Lock::Timeout=300", pkg], capture_output=True, text=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if r.returncode == 0 and Path("/usr/sbin/nginx").exists():
            return "/usr/sbin/nginx"
        log(f"  apt-get install {pkg} failed: {one_line(r.stderr or r.stdout, 200)}")
    return None


def count_all_until_zero(roots: dict[str, Callable[[int, str], bool]], timeout: float) -> dict[str, int]:
    """Poll all the sets together until each is empty or ``timeout`` passed; how many each has left."""
    deadline = time.monotonic() + timeout
    while True:
        left = {who: len(members(root)) for who, root in roots.items()}
        if not any(left.values()) or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- stacks

def qasup_stack(ctx: Ctx, folder: Path, unit: str) -> Qasup:
    q = ctx.qasup(folder, [])
    (q.root / "services.d" / "svc.toml").write_text(unit)
    return q


def supervisord_stack(ctx: Ctx, folder: Path, program: list[str]) -> Supervisord:
    s = ctx.supervisord(folder, [])
    with open(s.conf, "a") as f:
        f.write("\n".join(["[program:svc]", *program, "redirect_stderr=true",
                           f"stdout_logfile={s.log_file('svc')}"]) + "\n")
    return s


def shutdown(ctx: Ctx, d: Daemon, root: Callable[[int, str], bool]) -> None:
    ctx.stop(d, timeout=20)
    kill_all(root)


def attempt(res: RealResult, who: str, d: Daemon, fn: Callable[..., object], *args: object) -> None:
    """``fn(*args)``; a failure is recorded for ``who``, never raised."""
    try:
        fn(*args)
    except (WaitTimeout, RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
        res.fail(who, f"{type(e).__name__}: {e}", d)


def qasup_verb(q: Qasup, verb: str, name: str = "svc") -> tuple[int, float, str]:
    code, wall, out = timed_run([q.python, "-m", "supervisor", verb, name], q.environment(), cwd=q.root, timeout=90)
    if code != 0 and verb == "start":
        raise RuntimeError(f"qasup start {name} exited {code}: {one_line(out, 300)}")
    return code, wall, out


