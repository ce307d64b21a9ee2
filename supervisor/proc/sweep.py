"""The last step of a shutdown as PID 1 of a PID namespace (a container): :func:`sweep_namespace`; and
:func:`tracking`, the daemon's cgroup tree, reaper and sweep in one block.

After the ordered stop, whatever still runs in the namespace (a process that escaped every tracking, a
``docker exec`` shell, a daemon a service left) gets SIGTERM (and SIGCONT, in case it is stopped), a short
grace, then SIGKILL, and is reaped: what s6 does in its stage 3. Only PID 1 does this: ``kill(-1, ...)`` from
PID 1 reaches every other process of the namespace and nothing outside it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from supervisor.proc.cgroup import CgroupTree
from supervisor.proc.proctable import all_stats
from supervisor.proc.reaper import Reaper

__all__ = ["SWEEP_GRACE", "Swept", "others_alive", "sweep_namespace", "tracking"]

SWEEP_GRACE = 2.0
"""Seconds between the sweep's SIGTERM and its SIGKILL."""

_KILL_WAIT = 5.0


def others_alive() -> list[int]:
    """Every live (non-zombie) process visible in /proc except this one."""
    me = os.getpid()
    return [st.pid for st in all_stats() if st.pid != me and st.alive]


async def _wait_gone(deadline: float) -> list[int]:
    pause = 0.005
    while True:
        left = others_alive()
        if not left or time.monotonic() >= deadline:
            return left
        await anyio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.05)


def _kill_all(sig: int) -> None:
    try:
        os.kill(-1, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def sweep_namespace(reaper: Reaper, grace: float = SWEEP_GRACE) -> tuple[list[int], list[int]]:
    """As PID 1: SIGTERM every other process, wait up to ``grace`` seconds, SIGKILL what is left, and wait (up
    to 5 s) until it is gone; ``reaper`` reaps them meanwhile. Returns ``(terminated, killed)``: the pids that
    were there at the start, and those that needed SIGKILL. Does nothing unless this process is PID 1."""
    if os.getpid() != 1:
        return [], []
    found = others_alive()
    if not found:
        return [], []
    _kill_all(signal.SIGTERM)
    _kill_all(signal.SIGCONT)
    left = await _wait_gone(time.monotonic() + grace)
    if left:
        _kill_all(signal.SIGKILL)
        await _wait_gone(time.monotonic() + _KILL_WAIT)
    reaper.reap()
    return found, left


class Swept:
    """What the PID-1 sweep found: ``terminated`` (pids still running after the ordered stop), ``killed`` (those
    that needed SIGKILL). Empty unless qasup is PID 1 and something was left."""

    def __init__(self) -> None:
        self.terminated: list[int] = []
        self.killed: list[int] = []


@asynccontextmanager
async def tracking(daemon_id: str, say: Callable[[str], None]) -> AsyncIterator[tuple[Reaper, Swept]]:
    """The daemon's process side for the life of the block: its cgroup tree (``qasup-<daemon id>``, where the
    kernel allows), the :class:`Reaper` (which gives each spawn a cgroup in it), and at the end, after whatever
    the block ran (the ordered stop, the guardian's exit), the PID-1 sweep; then the cgroup tree is removed
    (killing anything still in it)."""
    cgroups = CgroupTree.open(daemon_id, say)
    swept = Swept()
    try:
        async with Reaper.open(cgroups=cgroups) as reaper:
            try:
                yield reaper, swept
            finally:
                with anyio.CancelScope(shield=True):
                    swept.terminated, swept.killed = await sweep_namespace(reaper)
                if swept.terminated:
                    say(f"PID 1: {len(swept.terminated)} process(es) still ran after the stop; sent SIGTERM"
                        + (f", then SIGKILL to {len(swept.killed)} after {SWEEP_GRACE:g}s" if swept.killed else ""))
                if cgroups is not None:
                    cgroups.close()
    finally:
        if cgroups is not None:
            cgroups.close()
