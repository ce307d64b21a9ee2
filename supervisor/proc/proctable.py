"""The /proc process table: reading it, the instance tag, and a service's tree within one scan.

A service's tree is every live process in the leader's process group or session, the ``/proc``
descendants of those, and every process whose environment carries the service's instance tag in
``QASUP_INSTANCE`` (which :meth:`~supervisor.proc.reaper.Reaper.spawn` injects, see :func:`add_tag`):
the tag survives setsid, double forks and the leader's death. This module owns that tag's format,
both the writing and the reading. It knows nothing of children or reapers; ``tree.py`` binds a
:class:`~supervisor.proc.reaper.Child` to it.
"""

from __future__ import annotations

import os
import time

__all__ = [
    "TAG_VARIABLE",
    "ProcStat",
    "Snapshot",
    "SnapshotCache",
    "add_tag",
    "all_stats",
    "own_children",
    "read_stat",
    "tags_of",
]

TAG_VARIABLE = "QASUP_INSTANCE"
"""Environment variable holding the instance tags of every qasup-spawned ancestor, space-separated."""


def add_tag(environ: dict[str, str], full_tag: str) -> None:
    """Append ``full_tag`` to the instance tags that ``environ`` inherited (in place)."""
    inherited = environ.get(TAG_VARIABLE, "").strip()
    environ[TAG_VARIABLE] = f"{inherited} {full_tag}" if inherited else full_tag


def read_all(path: str, limit: int = 1 << 22) -> bytes | None:
    """The content of a /proc file, or None if it (or its process) is gone or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


class ProcStat:
    """The fields of /proc/PID/stat that tree discovery needs."""

    __slots__ = ("pid", "state", "ppid", "pgid", "sid", "start")

    def __init__(self, pid: int, state: bytes, ppid: int, pgid: int, sid: int, start: int) -> None:
        self.pid, self.state, self.ppid, self.pgid, self.sid, self.start = pid, state, ppid, pgid, sid, start

    @property
    def alive(self) -> bool:
        """Not a zombie (Z) or dead (X/x): it can still run code or hold resources."""
        return self.state not in (b"Z", b"X", b"x")


def read_stat(pid: int) -> ProcStat | None:
    """Parse /proc/PID/stat; None when the process is gone (processes vanish mid-walk)."""
    data = read_all(f"/proc/{pid}/stat", 4096)
    if not data:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ")"
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return ProcStat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def all_stats() -> list[ProcStat]:
    """Every process visible in /proc (empty when /proc is not mounted)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    stats = []
    for name in names:
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                stats.append(st)
    return stats


def tags_of(pid: int) -> list[bytes]:
    """The instance tags in a process's initial environment (empty when unreadable or absent)."""
    data = read_all(f"/proc/{pid}/environ")
    if not data:
        return []
    key = TAG_VARIABLE.encode() + b"="
    data = b"\0" + data
    at = data.find(b"\0" + key)
    if at < 0:
        return []
    start = at + 1 + len(key)
    end = data.find(b"\0", start)
    return data[start : end if end >= 0 else len(data)].split()


def own_children() -> set[int] | None:
    """qasup's direct children, from /proc/self/task/*/children (None where the kernel lacks that file).

    Every thread's list, not only the main thread's: each file lists the children of one thread. The
    spawn worker threads fork too, a thread that exits hands its children to another live thread of
    qasup, and orphans are re-parented to whichever live thread the kernel picks (find_alive_thread).
    """
    out: set[int] = set()
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        data = read_all(f"/proc/self/task/{tid}/children", 1 << 20)
        if data is None:
            return None
        out.update(int(x) for x in data.split())
    return out


class Snapshot:
    """One scan of /proc, indexed for tree discovery, shared by every lookup made within ``MAX_AGE``.

    Stopping 1000 services at once would otherwise scan every process 1000 times (and more, while
    polling). Environment tags are read lazily, once per process per snapshot, and only for the
    processes that can carry a service's tag without being in its tree: qasup's own children
    (orphans re-parented to qasup as subreaper or PID 1), or every process when qasup is neither.
    """

    MAX_AGE = 0.005

    def __init__(self, scope_all: bool) -> None:
        started = time.monotonic()
        self.me = os.getpid()
        self.by_pid: dict[int, ProcStat] = {}
        self.kids: dict[int, list[int]] = {}
        self.by_group: dict[int, list[int]] = {}
        self.by_session: dict[int, list[int]] = {}
        for st in all_stats():
            self.by_pid[st.pid] = st
            self.kids.setdefault(st.ppid, []).append(st.pid)
            self.by_group.setdefault(st.pgid, []).append(st.pid)
            self.by_session.setdefault(st.sid, []).append(st.pid)
        self.scope_all = scope_all
        self._tags: dict[int, list[bytes]] = {}
        self.taken = time.monotonic()
        # a scan of thousands of processes takes tens of ms: reuse it for as long again, else every caller
        # would find it stale and scan anew
        self.max_age = max(self.MAX_AGE, 2 * (self.taken - started))

    def tag_candidates(self) -> list[int]:
        if self.scope_all:
            return [pid for pid in self.by_pid if pid != self.me]
        return self.kids.get(self.me, [])

    def tags(self, pid: int) -> list[bytes]:
        got = self._tags.get(pid)
        if got is None:
            got = self._tags[pid] = tags_of(pid)
        return got

    def tree(self, leader: int, tag: bytes, leader_is_ours: bool) -> dict[int, ProcStat]:
        """Live members of the tree of ``leader`` (a session and group leader) tagged ``tag``, keyed by pid.

        ``leader_is_ours`` is False when the leader's pid number now belongs to another process: then
        only the tag ties processes to the tree. qasup itself is never a member. Empty without /proc.
        """
        if not self.by_pid:  # no /proc: the leader is all we know
            return {}
        roots: set[int] = set()
        if leader_is_ours:
            if leader in self.by_pid:
                roots.add(leader)
            roots.update(self.by_group.get(leader, ()))
            roots.update(self.by_session.get(leader, ()))
        for pid in self.tag_candidates():
            if pid not in roots and pid != leader:
                if self.by_pid[pid].alive and tag in self.tags(pid):
                    roots.add(pid)
        found: set[int] = set()
        todo = list(roots)
        while todo:
            pid = todo.pop()
            if pid in found or pid == self.me:
                continue
            found.add(pid)
            todo.extend(self.kids.get(pid, ()))
        # the snapshot may be a few ms old: report only what is alive now (same process: same start time)
        live: dict[int, ProcStat] = {}
        for pid in found:
            seen = self.by_pid[pid]
            if seen.alive:
                now = read_stat(pid)
                if now is not None and now.alive and now.start == seen.start:
                    live[pid] = now
        return live


class SnapshotCache:
    """The one :class:`Snapshot` that every lookup shares while it is fresh (a Reaper holds one)."""

    def __init__(self) -> None:
        self._snap: Snapshot | None = None

    def get(self, scope_all: bool) -> Snapshot:
        """The current snapshot, or a new scan (reading tags of every process if ``scope_all``) once it is stale."""
        snap = self._snap
        if snap is None or time.monotonic() - snap.taken > snap.max_age:
            snap = self._snap = Snapshot(scope_all=scope_all)
        return snap
