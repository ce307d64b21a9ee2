"""The main process of a ``type = "forking"`` service: found from its ``pid_file`` or as the one process its
launcher left, and followed across the launcher's exit.

The launcher of a forking service exits 0 once its daemon runs. The daemon is then the service's main process:
the pid in ``pid_file`` (re-read until the start timeout, since daemons write it late), which must belong to the
service's tracking set (:func:`~supervisor.proc.tree.member_stats`: cgroup, session, process group, descendants,
instance tag), else the single process left in that set with no parent in it (a master with its workers counts
as one). It is re-parented to qasup (a child subreaper or PID 1), which adopts it in the
:class:`~supervisor.proc.reaper.Reaper` so that its exit code is known; without that it is watched by pidfd.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from supervisor.proc.proctable import read_stat
from supervisor.proc.reaper import Child
from supervisor.proc.tree import member_stats
from supervisor.records import dataclass

__all__ = ["MainProcess", "find_main", "read_pid_file", "wait_exit"]

SETTLE = 0.1          # a guessed main process must be the only one left for this long (double forks settle)
REPARENT_WAIT = 1.0   # how long to wait for a daemon found by pid file to be re-parented to qasup
_PAUSE_FIRST = 0.01
_PAUSE_MAX = 0.25


@dataclass(eq=False)
class MainProcess:
    """A forking service's daemon: ``pid`` and its start time (so a recycled pid is never mistaken for it).

    ``child`` is the :class:`Child` the reaper routes its exit status to, when qasup is its parent; None when
    it is not (then its exit is seen by pidfd and its exit code is unknown)."""

    pid: int
    start: int
    child: Child | None = None

    def alive(self) -> bool:
        st = read_stat(self.pid)
        return st is not None and st.start == self.start and st.alive

    async def wait(self) -> int | None:
        """Its exit code once it has exited (None when it is unknown: qasup was not its parent)."""
        if self.child is not None:
            return await self.child.wait()
        await wait_exit(self.pid, self.start)
        return None


async def wait_exit(pid: int, start: int) -> None:
    """Return once the process ``pid`` that started at ``start`` has exited (a zombie counts as exited)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:   # no pidfd (old kernel, no descriptor left): poll
        pause = _PAUSE_FIRST
        while True:
            st = read_stat(pid)
            if st is None or st.start != start or not st.alive:
                return
            await anyio.sleep(pause)
            pause = min(pause * 2, _PAUSE_MAX)
    try:
        st = read_stat(pid)   # the pidfd pins the process: is it still the one we mean?
        if st is None or st.start != start or not st.alive:
            return
        await anyio.wait_readable(fd)   # a pidfd turns readable when its process exits
    finally:
        os.close(fd)


def read_pid_file(path: Path) -> int | str:
    """The pid in ``path``, or why there is none (missing, unreadable, not a number)."""
    try:
        with open(path, "rb") as f:
            data = f.read(256)
    except FileNotFoundError:
        return f"pid file {path} does not exist"
    except OSError as e:
        return f"cannot read pid file {path}: {e.strerror or e}"
    text = data.decode("ascii", "replace").strip()
    if not text:
        return f"pid file {path} is empty"
    if not text.isdigit() or int(text) <= 0:
        return f"pid file {path} holds {text[:40]!r}, not a process id"
    return int(text)


def _from_pid_file(child: Child, path: Path) -> tuple[int, int] | str:
    got = read_pid_file(path)
    if isinstance(got, str):
        return got
    st = read_stat(got)
    if st is None or not st.alive:
        return f"pid file {path} names pid {got}, which is not running"
    members = member_stats(child)
    if got not in members:
        return (f"pid file {path} names pid {got}, which is not a process of this service (a stale pid file, "
                f"or another program's): qasup follows only a process this service started")
    return got, st.start


def _single_root(child: Child) -> tuple[int, int] | str:
    members = member_stats(child)
    roots = sorted(pid for pid, st in members.items() if st.ppid not in members)
    if not roots:
        return ("the launcher exited 0 but left no process running (the daemon exited at once, or escaped "
                "qasup's tracking: set pid_file)")
    if len(roots) > 1:
        shown = ", ".join(map(str, roots[:8])) + (", ..." if len(roots) > 8 else "")
        return (f"the launcher left {len(roots)} separate processes running (pids {shown}), so the main "
                f"process is ambiguous: set pid_file to the file the daemon writes its pid to")
    pid = roots[0]
    return pid, members[pid].start


async def find_main(child: Child, pid_file: Path | None, deadline: float,
                    give_up: Callable[[], bool] = lambda: False,
                    announced: Callable[[], int | None] = lambda: None) -> MainProcess | str:
    """The main process of a forking service whose launcher ``child`` exited 0, or why there is none.

    Tries again (the pid file may come late, a double fork may not have settled) until ``deadline``
    (monotonic) or until ``give_up()`` says so (a stop came); then the last reason. ``announced()``: a pid the
    service named itself (sd_notify ``MAINPID=``), taken first when it is a running process of the service."""
    pause = _PAUSE_FIRST
    guess: tuple[int, int] | None = None
    guess_since = 0.0
    none_since: float | None = None
    while True:
        now = time.monotonic()
        said = announced()
        st = read_stat(said) if said is not None else None
        if said is not None and st is not None and st.alive and said in member_stats(child):
            return await _adopt(child, (said, st.start), deadline)
        got = _from_pid_file(child, pid_file) if pid_file is not None else _single_root(child)
        if isinstance(got, tuple):
            none_since = None
            if pid_file is not None:
                return await _adopt(child, got, deadline)
            if got != guess:
                guess, guess_since = got, now
            elif now - guess_since >= SETTLE:
                return await _adopt(child, got, deadline)
        else:
            guess = None
            if pid_file is None and "no process" in got:
                if none_since is None:
                    none_since = now
                elif now - none_since >= SETTLE:   # nothing is left, and nothing can appear
                    return got
        if give_up():
            return "stopped before the main process was known"
        if now >= deadline:
            return got if isinstance(got, str) else "the main process did not settle"
        await anyio.sleep(min(pause, max(deadline - now, 0.0)))
        pause = min(pause * 2, _PAUSE_MAX)


async def _adopt(child: Child, found: tuple[int, int], deadline: float) -> MainProcess:
    """Follow the daemon: wait briefly for it to be re-parented to qasup, then register it with the reaper."""
    pid, start = found
    reaper = child.reaper
    main = MainProcess(pid, start)
    if reaper is None or not reaper.adopts_orphans:
        return main
    until = min(deadline, time.monotonic() + REPARENT_WAIT)
    pause = _PAUSE_FIRST
    while True:
        st = read_stat(pid)
        if st is None or st.start != start:
            return main   # gone meanwhile: its exit shows at once
        if st.ppid == os.getpid():
            main.child = reaper.adopt(pid, child.tag, child.cgroup)
            return main
        if time.monotonic() >= until:
            return main   # its parent stays (not a daemon of ours): watched by pidfd
        await anyio.sleep(pause)
        pause = min(pause * 2, _PAUSE_MAX)
