"""Watching processes from outside: their output lines, qasup's event log, /proc counters; and clean-up.

Every time here is wall-clock ``time.time()`` so that it compares with the timestamps that stand-ins write
into their output and that qasup writes into ``events.jsonl``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class WaitTimeout(Exception):
    """A condition did not hold within its deadline (the message says which)."""


class LineWatcher:
    """Reads a process's stdout in a thread, stamping each line with the time it arrived.

    Draining the pipe continuously also keeps the watched daemon from ever blocking on its own output.
    """

    def __init__(self, stream, keep: int = 200_000) -> None:
        self.lines: list[tuple[float, str]] = []
        self.keep = keep
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        try:
            for raw in iter(stream.readline, b""):
                t = time.time()
                with self._cond:
                    if len(self.lines) < self.keep:
                        self.lines.append((t, raw.decode("utf-8", "replace").rstrip("\n")))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait_for(self, pred: Callable[[str], bool], timeout: float, start: int = 0, count: int = 1,
                 what: str = "a line") -> tuple[float, int]:
        """Wait until ``count`` lines from index ``start`` on satisfy ``pred``.

        Returns the arrival time of the count-th such line and the index after it.
        """
        deadline = time.monotonic() + timeout
        seen, i = 0, start
        with self._cond:
            while True:
                while i < len(self.lines):
                    t, line = self.lines[i]
                    i += 1
                    if pred(line):
                        seen += 1
                        if seen >= count:
                            return t, i
                left = deadline - time.monotonic()
                if self.closed:
                    raise WaitTimeout(f"the output ended before {what} ({seen}/{count} seen)")
                if left <= 0:
                    raise WaitTimeout(f"no {what} within {timeout:g}s ({seen}/{count} seen)")
                self._cond.wait(min(left, 0.5))

    def __len__(self) -> int:
        with self._cond:
            return len(self.lines)

    def tail(self, n: int = 15) -> list[str]:
        with self._cond:
            return [line for _, line in self.lines[-n:]]


class EventsTail:
    """Follows qasup's ``events.jsonl`` by polling (the ``ts`` inside each event is what counts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict] = []
        self._pos = 0
        self._partial = b""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return
        self._pos += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for line in complete:
            if line.strip():
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass

    def wait_for(self, pred: Callable[[dict], bool], timeout: float, start: int = 0, count: int = 1,
                 what: str = "an event", interval: float = 0.003) -> tuple[dict, int]:
        """Wait until ``count`` events from index ``start`` on satisfy ``pred``; the count-th and the index after."""
        deadline = time.monotonic() + timeout
        seen, i = 0, start
        while True:
            self.poll()
            while i < len(self.events):
                ev = self.events[i]
                i += 1
                if pred(ev):
                    seen += 1
                    if seen >= count:
                        return ev, i
            if time.monotonic() > deadline:
                raise WaitTimeout(f"no {what} in {self.path.name} within {timeout:g}s ({seen}/{count} seen)")
            time.sleep(interval)


# ---------------------------------------------------------------------------------------------- /proc

def cpu_ticks(pid: int) -> int:
    """utime + stime of the process itself (not its children), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def guardian_pid(daemon_pid: int) -> int | None:
    """qasup's guardian: the child of the daemon whose QASUP_INSTANCE tags include ``qasup-guardian:``."""
    kids: list[str] = []
    try:
        for tid in os.listdir(f"/proc/{daemon_pid}/task"):
            with open(f"/proc/{daemon_pid}/task/{tid}/children") as f:
                kids += f.read().split()
    except OSError:
        return None
    for kid in kids:
        try:
            with open(f"/proc/{kid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(b"QASUP_INSTANCE=") and b"qasup-guardian:" in v for v in env):
            return int(kid)
    return None


def marked_pids(var: str, value: str) -> list[int]:
    """Processes whose initial environment holds ``VAR=VALUE`` (the harness marks all it starts)."""
    needle = b"\0" + f"{var}={value}".encode() + b"\0"
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in b"\0" + f.read() + b"\0":
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_marked(var: str, value: str, rounds: int = 5) -> int:
    """SIGKILL every process whose environment holds ``VAR=VALUE``, until none is left; how many were killed."""
    killed = 0
    for _ in range(rounds):
        pids = marked_pids(var, value)
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


def timed_run(argv: list[str], env: dict[str, str], timeout: float = 30.0, cwd: Path | None = None
              ) -> tuple[int, float, str]:
    """Run a command to completion; (exit code, wall seconds, output)."""
    start = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return r.returncode, time.perf_counter() - start, r.stdout.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------- stats

def median(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


def percentile(xs: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    xs = sorted(xs)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, -(-len(xs) * p // 100) - 1))
    return xs[int(k)]


SUPERVISORD_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def supervisord_line_time(line: str) -> float | None:
    """The wall time a supervisord log line carries (millisecond resolution, local time)."""
    m = SUPERVISORD_TS.match(line)
    if not m:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
