"""Which processes belong to a service: :func:`members` of a :class:`Child`'s tree, :func:`anything_left`.

The /proc side lives in ``proctable.py``, the cgroup side in ``cgroup.py``; this module binds a spawned
:class:`Child` (its cgroup, its leader pid, its instance tag, its reaper's shared snapshot) to it.
"""

from __future__ import annotations

import os

from supervisor.proc.proctable import ProcStat, Snapshot, own_children, read_stat
from supervisor.proc.reaper import Child

__all__ = ["anything_left", "member_stats", "members"]


def _snapshot(child: Child) -> Snapshot:
    reaper = child.reaper
    if reaper is None:
        return Snapshot(scope_all=True)
    return reaper.snapshot()


def member_stats(child: Child) -> dict[int, ProcStat]:
    """Live members of ``child``'s tree, keyed by pid (see :func:`members`); each is noted in the guardian's
    ledger (once) so that it is killed if qasup dies."""
    snap = _snapshot(child)
    found = snap.tree(child.pid, child.tag.encode(), leader_is_ours=not child.pid_recycled())
    cgroup = child.cgroup
    if cgroup is not None:
        for pid in cgroup.pids():
            if pid not in found and pid != snap.me:
                st = read_stat(pid)
                if st is not None and st.alive:
                    found[pid] = st
    ledger = child.reaper.ledger if child.reaper is not None else None
    if ledger is not None:
        for st in found.values():
            ledger.note_stat(st)
    return found


def members(child: Child) -> set[int]:
    """Every live (non-zombie) process that belongs to ``child``'s tree.

    The union of: every process in ``child.cgroup`` (when it has one; whatever they did: setsid, an
    empty environment, a new title), the leader, its process group, its session, the /proc
    descendants of all of those, and processes whose environment carries ``child.tag`` in ``QASUP_INSTANCE`` (which
    finds setsid'd double-forked daemons even after the leader is gone) with their descendants.
    qasup itself is never a member. Empty when /proc is unavailable.
    """
    return set(member_stats(child))


def anything_left(child: Child) -> bool:
    """Whether any process of ``child``'s tree may still be alive, after the leader exited.

    A fast path for the common case (checked at every exit): when qasup is a subreaper or PID 1, every
    live descendant of the leader is in its process group or was re-parented to qasup (or descends from
    one that was). So an empty group and no unknown children of qasup mean nothing is left, without a
    scan of /proc. Anything else falls back to :func:`members`. A populated cgroup answers at once (one read of
    ``cgroup.events`` on v2); an empty one is removed here.
    """
    cgroup = child.cgroup
    if cgroup is not None and cgroup.populated():
        return True
    left = _anything_left(child)
    if not left and cgroup is not None and child.returncode is not None:
        cgroup.remove()
    return left


def _anything_left(child: Child) -> bool:
    reaper = child.reaper
    if reaper is None or not reaper.adopts_orphans or child.pid_recycled():
        return bool(members(child))
    try:
        os.killpg(child.pid, 0)
        return bool(members(child))     # the group still has processes
    except ProcessLookupError:
        pass
    except PermissionError:
        return bool(members(child))
    kids = own_children()
    if kids is None or any(not reaper.is_running(pid) for pid in kids):
        return bool(members(child))     # orphans (of this service or another): look closer
    return False
