"""Stopping a service's whole tree: :func:`terminate` signals every member, then SIGKILLs what is left;
:func:`kill_tree` SIGKILLs it at once.

Two modes (``[stop] mode``): ``group`` sends the stop signal to the process group and every member at once;
``main`` sends it to the main process only and to the rest once the main process has exited (systemd's
KillMode=mixed), so a server's workers finish the requests in flight while its master drains them. In both, at
``timeout`` after the first signal everything left gets SIGKILL (and the service's cgroup is killed, where it has
one). Every signal goes to one process seen in a scan and pinned by a pidfd, so a pid number recycled
between the scan and the kill is never hit.
"""

from __future__ import annotations

import os
import signal
import time

import anyio

from supervisor.proc.kernel import out_of_fds
from supervisor.proc.pidfile import MainProcess, wait_exit
from supervisor.proc.proctable import ProcStat, read_stat
from supervisor.proc.reaper import Child
from supervisor.proc.tree import member_stats

__all__ = ["kill_tree", "terminate", "tree_stats"]

_POLL_FIRST = 0.005  # first pause when polling /proc for a tree to vanish; doubles ...
_POLL_MAX = 0.05  # ... up to this
_KILL_RESEND = 0.5  # while waiting for SIGKILLed processes to vanish, re-send this often
_LEADER_RESCAN = 0.25  # while the leader runs, look for new members this often


def tree_stats(child: Child, main: MainProcess | None = None) -> dict[int, ProcStat]:
    """The live members of ``child``'s tree, and of the tree of ``main`` (a forking service's daemon, which
    need not be in the launcher's session or group) while it runs."""
    stats = member_stats(child)
    if main is not None and child.reaper is not None and main.pid not in stats and main.alive():
        stats.update(child.reaper.snapshot().tree(main.pid, child.tag.encode(), leader_is_ours=True))
    return stats


def _kill_cgroup(child: Child) -> None:
    """SIGKILL everything in the service's cgroup, where it has one (nothing escapes that)."""
    cgroup = getattr(child, "cgroup", None)
    if cgroup is not None:
        try:
            cgroup.kill()
        except OSError:
            pass


def _signal_pid(pid: int, start: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` only if it is still the process seen in the scan (same start time).

    A pidfd pins the process, so a pid recycled between scan and kill is never hit.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError) as exc:  # no pidfd support (or no descriptor left): best effort
        st = read_stat(pid)
        if (st is not None and st.start == start) or (st is None and out_of_fds(exc)):
            # out of descriptors /proc cannot be read either: the pid was seen in a scan a moment ago
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return
    try:
        st = read_stat(pid)
        if st is not None and st.start == start:
            signal.pidfd_send_signal(fd, sig)
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        os.close(fd)


class _Stopper:
    """State of one :func:`terminate`: which processes were seen as members and which got the
    current signal. Once seen, a process stays tracked until it is a zombie or gone: a dying
    process loses its memory map (so its environment tag becomes unreadable) before it turns
    into a zombie, and it may still hold files and devices (GPU memory) until then."""

    def __init__(self, child: Child, main: MainProcess | None) -> None:
        self.child = child
        self.main = main
        self.tracked: dict[int, int] = {}  # pid -> start time
        self.signalled: set[tuple[int, int]] = set()

    def live(self) -> dict[int, int]:
        """Every live member now: a fresh scan plus tracked processes that still run."""
        for pid, seen in tree_stats(self.child, self.main).items():
            self.tracked[pid] = seen.start
        for pid, start in list(self.tracked.items()):
            st = read_stat(pid)
            if st is None or st.start != start or not st.alive:
                del self.tracked[pid]
        return dict(self.tracked)

    def send(self, sig: int, live: dict[int, int]) -> None:
        """Send ``sig`` to every member that has not had it yet."""
        for pid, start in live.items():
            if (pid, start) not in self.signalled:
                self.signalled.add((pid, start))
                _signal_pid(pid, start, sig)

    async def wait_gone(self, sig: int, deadline: float) -> int | None:
        """Poll until the leader is reaped and no member is alive (then the leader's exit code), or until
        ``deadline`` (monotonic) passes (then None); members that appear meanwhile get ``sig``."""
        pause = _POLL_FIRST
        while True:
            if self.child.returncode is None:
                # the leader runs: wait for its exit (an event), rescanning now and then for members
                # that appeared meanwhile (they get the signal too)
                now = time.monotonic()
                if now >= deadline:
                    return None
                with anyio.move_on_after(min(_LEADER_RESCAN, deadline - now)):
                    await self.child.wait()
                if self.child.returncode is None:
                    self.send(sig, self.live())
                    continue
            live = self.live()
            if not live:
                return self.child.returncode
            now = time.monotonic()
            if now >= deadline:
                return None
            self.send(sig, live)
            await anyio.sleep(min(pause, deadline - now))
            pause = min(pause * 2, _POLL_MAX)


async def terminate(child: Child, sig: int, timeout: float, *, mode: str = "group",
                    main: MainProcess | None = None) -> int:
    """Stop ``child``'s whole tree; returns the leader's exit code.

    ``mode="group"``: sends ``sig`` to the process group and to every member (members that appear later get it
    too). ``mode="main"``: sends ``sig`` to the main process only (``main``, a forking service's daemon, else the
    leader), and to every other member once it has exited. Then it waits for the leader and all members to be
    gone (zombies count as gone) until ``timeout`` seconds after the first signal, then sends SIGKILL to the
    group, the cgroup and all members (again every 0.5 s) until none remain. Needs the
    :class:`~supervisor.proc.reaper.Reaper` running. It does not give up on processes that survive SIGKILL
    (stuck in the kernel); bound it with a cancel scope if that matters.
    """
    deadline = time.monotonic() + timeout
    stopper = _Stopper(child, main)
    if mode == "main":
        await _stop_main(child, sig, main, deadline)
    if child.returncode is None:
        child.signal_group(sig)
    stopper.send(sig, stopper.live())
    code = await stopper.wait_gone(sig, deadline)
    if code is None:
        child.forced = True
        _kill_cgroup(child)
    while code is None:
        if child.returncode is None:
            child.signal_group(signal.SIGKILL)
        stopper.signalled.clear()
        stopper.send(signal.SIGKILL, stopper.live())
        code = await stopper.wait_gone(signal.SIGKILL, time.monotonic() + _KILL_RESEND)
    return code


async def _stop_main(child: Child, sig: int, main: MainProcess | None, deadline: float) -> None:
    """``[stop] mode = "main"``: signal the main process alone and wait (until ``deadline``) for its exit."""
    with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):
        if main is not None:
            if main.alive():
                _signal_pid(main.pid, main.start, sig)
                await wait_exit(main.pid, main.start)
        elif child.returncode is None:
            try:
                os.kill(child.pid, sig)   # not reaped yet, so the pid cannot have been recycled
            except (ProcessLookupError, PermissionError):
                pass
            await child.wait()


def kill_tree(child: Child, main: MainProcess | None = None) -> None:
    """SIGKILL the process group, the cgroup and every member of ``child``'s tree (and ``main``'s) now."""
    if child.returncode is None:
        child.signal_group(signal.SIGKILL)
    _kill_cgroup(child)
    for pid, st in tree_stats(child, main).items():
        _signal_pid(pid, st.start, signal.SIGKILL)
