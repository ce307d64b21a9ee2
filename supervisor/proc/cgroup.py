"""Cgroups: one per service instance, under one per daemon, where the kernel lets qasup make them.

A cgroup holds every process forked inside it, whatever it does: setsid, double fork, an empty environment, a
new process title. So a service's cgroup finds processes that the process group, the session and the
``QASUP_INSTANCE`` environ tag cannot (nginx and redis overwrite their environ with their title).

Where: the cgroup2 mount (``/sys/fs/cgroup`` when it is cgroup2, ``/sys/fs/cgroup/unified`` on a hybrid host),
at qasup's own cgroup (``0::PATH`` in ``/proc/self/cgroup``); else a writable cgroup v1 ``freezer`` (preferred:
it can stop a fork bomb while it is killed) or ``pids`` hierarchy, at qasup's own cgroup there. Else none: the
reason is given once and everything works as without cgroups (process group, session, /proc descendants, tag).
``QASUP_CGROUPS=none|v1|v2`` forces a choice (``none`` turns cgroups off).

Layout: ``<own cgroup>/qasup-<daemon id>/`` made when the daemon starts and removed at its end (by the guardian
if qasup was killed), and in it one cgroup per spawned process tree, ``<tag>.<n>`` (``sanic.3``,
``sanic.probe.4``). qasup never enables a controller (``cgroup.subtree_control`` stays as it
is), and never sets a limit: cgroup v2's rule that a cgroup with processes cannot enable controllers for its
children is never in play, and resource control stays with whoever owns the outer cgroup (Docker, systemd).

Placement. Python cannot spawn straight into a cgroup (CLONE_INTO_CGROUP), and a ``preexec_fn`` would make
Popen fork instead of vfork and is unsafe with threads. So qasup moves *itself*, once, into a cgroup of its own,
``qasup-<id>/qasup`` (and back where it came from at the end), and each spawning thread moves itself, for the
time of one spawn, into a thread leaf of its own, ``qasup/t<k>`` (a ``threaded`` cgroup on v2; v1 moves threads
through ``tasks``): a child is born in its spawning thread's cgroup. Right after ``Popen`` returns (the child has
exec'd), the thread moves the child into its service's cgroup, then whatever else is in its leaf: what the child
forked in that moment, orphans of a ``(setsid env -i CMD &)`` included, until the leaf holds only the thread.
Nothing a service forks is ever outside its cgroup and the leaf of the thread that spawned it, and nothing of
another spawn is in that leaf. Where threads cannot be placed apart (a v2 kernel without threaded cgroups), the
same is done with qasup's own cgroup as the leaf, spawns then serialized by :attr:`CgroupTree.lock` from fork to
placement. The guardian, which must outlive the tree, is moved back out the same way. Cost: a mkdir, two thread
moves, one process move and one read per spawn (about 0.6 ms per service in a 1000-service bring-up on 2 busy
cores).

The API the rest of qasup uses: :class:`CgroupTree` (``open``, ``make``, ``spawning`` and its
:class:`Slot`'s ``place``, ``retire``, ``leave``, ``close``) and :class:`Cgroup` (in ``cgroupfs.py``: ``pids``,
``populated``, ``kill``, ``remove``, ``adopt``). No method raises: a cgroup that went away reads as empty.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from supervisor.proc.cgroupfs import CGROUPS_ENV, Cgroup, find_hierarchy, put_pid
from supervisor.proc.cgroupfs import read_text as _read
from supervisor.proc.cgroupfs import write_text as _write
from supervisor.proc.proctable import read_stat

__all__ = ["CGROUPS_ENV", "LEAF", "Cgroup", "CgroupTree", "Slot", "find_hierarchy"]

LEAF = "qasup"
"""qasup's own cgroup in the daemon's (``qasup-<id>/qasup``): no service cgroup is named without a ``.n``."""


class CgroupTree:
    """The daemon's cgroup, ``<own cgroup>/qasup-<id>``: qasup's own cgroup ``qasup`` in it (with the spawning
    threads' leaves), and the per-instance cgroups. Spawn inside :meth:`spawning` (see the module)."""

    def __init__(self, root: str, base: str, version: int, controller: str | None) -> None:
        self.root = root
        self.base = base                     # the cgroup qasup came from, and goes back to at the end
        self.leaf = os.path.join(root, LEAF)
        self.version = version
        self.controller = controller
        self.lock = threading.Lock()         # without thread leaves: held by a spawn from fork to placement
        self._count = 0
        self._count_lock = threading.Lock()
        self._retired: set[Cgroup] = set()   # instances whose leader exited but whose cgroup was not empty
        self.broken: str | None = None       # why cgroups stopped being used (a move failed)
        self._me = os.getpid()
        self._leaf_fd = -1                   # the leaf's cgroup.procs, open for reading
        self._threads = "cgroup.threads" if version == 2 else "tasks"   # where a thread is moved by its id
        self._thread_leaves = True           # False where threads cannot be placed apart: spawns serialize
        self._leaves = 0
        self._free: list[str] = []           # thread leaves not in use
        self._kept: dict[int, str] = {}      # spawn thread -> the leaf it stays in between spawns

    @property
    def kind(self) -> str:
        """``cgroup2 at PATH`` or ``cgroup v1 (freezer) at PATH``: for messages."""
        return f"cgroup2 at {self.root}" if self.version == 2 else f"cgroup v1 ({self.controller}) at {self.root}"

    @classmethod
    def open(cls, daemon_id: str, say: Callable[[str], None] | None = None,
             prefer: str | None = None) -> CgroupTree | None:
        """Make the daemon's cgroup and move qasup into its leaf; None (with the reason said through ``say``)
        where that is impossible."""
        found = find_hierarchy(prefer)
        if isinstance(found, str):
            if say is not None and not found.startswith(CGROUPS_ENV):
                say(f"no cgroups ({found}): services are tracked by process group, session and environment "
                    "tag only (see the README, 'What is guaranteed where')")
            return None
        version, base, controller = found
        root = os.path.join(base, f"qasup-{daemon_id}")
        tree = cls(root, base, version, controller)
        try:
            os.mkdir(root, 0o755)
            os.mkdir(tree.leaf, 0o755)
            if not _write(os.path.join(tree.leaf, "cgroup.procs"), str(tree._me)):
                raise OSError(f"cannot move qasup (pid {tree._me}) into {tree.leaf}")
            tree._leaf_fd = os.open(os.path.join(tree.leaf, "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            for at in (tree.leaf, root):
                try:
                    os.rmdir(at)
                except OSError:
                    pass
            if say is not None:
                say(f"no cgroups ({e.strerror or e}): services are tracked by process group, session and "
                    "environment tag only")
            return None
        tree._remove_stale()
        return tree

    def _remove_stale(self, min_age: float = 60.0) -> None:
        """Remove the empty trees of daemons that are gone (killed along with their guardian): a live daemon is
        in its own leaf from :meth:`open` to :meth:`leave`; a tree younger than ``min_age`` seconds is left
        alone (its daemon may be between making it and moving in)."""
        import time

        try:
            names = [n for n in os.listdir(self.base) if n.startswith("qasup-")]
        except OSError:
            return
        for name in names:
            other = Cgroup(os.path.join(self.base, name), self.version, False)
            if other.path == self.root or other.populated():
                continue
            try:
                if time.time() - os.stat(other.path).st_mtime < min_age:
                    continue
            except OSError:
                continue
            other.remove()

    def make(self, tag: str) -> Cgroup | None:
        """A new, empty cgroup for one spawn (``<tag>.<n>``); None if it cannot be made (then no cgroup)."""
        if self.broken is not None:
            return None
        with self._count_lock:
            self._count += 1
            n = self._count
            retired = list(self._retired) if self._retired and n % 16 == 0 else []
        for old in retired:   # leftovers of earlier instances: gone by now, most of the time
            if old.remove():
                with self._count_lock:
                    self._retired.discard(old)
        safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in tag)[:200] or "x"
        path = os.path.join(self.root, f"{safe}.{n}")
        try:
            os.mkdir(path, 0o755)
        except OSError:
            return None
        return Cgroup(path, self.version, self.controller == "freezer")

    @contextmanager
    def spawning(self) -> Iterator[Slot]:
        """Where the calling thread forks a child: a thread leaf of its own (``qasup/t<k>``), so that whatever
        the child forks before it is placed is told apart from every other spawn's; where threads cannot be
        placed apart, qasup's leaf with :attr:`lock` held (spawns serialize)."""
        tid = threading.get_native_id()
        # A worker thread keeps its leaf between spawns: every move of a task between cgroups waits for an RCU
        # grace period in the kernel (milliseconds), so one move per spawn (the child's), not three. The event-loop
        # thread goes back to qasup's leaf after each spawn (qasup's own work must not be born in a spawn leaf).
        keep = threading.current_thread() is not threading.main_thread()
        with self._count_lock:
            kept = self._kept.get(tid) if keep else None
        if kept is not None:
            yield Slot(self, kept, tid)
            return
        leaf = self._take_leaf()
        if leaf is not None and _write(os.path.join(leaf, self._threads), str(tid)):
            if keep:
                with self._count_lock:
                    self._kept[tid] = leaf
                yield Slot(self, leaf, tid)
                return
            try:
                yield Slot(self, leaf, tid)
            finally:
                _write(os.path.join(self.leaf, self._threads), str(tid))
                with self._count_lock:
                    self._free.append(leaf)
            return
        if leaf is not None:
            self._thread_leaves = False   # refused: serialize instead
        with self.lock:
            yield Slot(self, None, tid, _ticks_now() - 1)

    def _take_leaf(self) -> str | None:
        if not self._thread_leaves:
            return None
        with self._count_lock:
            for t in [t for t in self._kept if not os.path.exists(f"/proc/self/task/{t}")]:
                self._free.append(self._kept.pop(t))   # its thread has ended: the leaf is empty again
            if self._free:
                return self._free.pop()
            self._leaves += 1
            path = os.path.join(self.leaf, f"t{self._leaves}")
        try:
            os.mkdir(path, 0o755)
        except OSError:
            self._thread_leaves = False
            return None
        if self.version == 2 and not _write(os.path.join(path, "cgroup.type"), "threaded"):
            self._thread_leaves = False
            try:
                os.rmdir(path)
            except OSError:
                pass
            return None
        return path

    def _in_leaf(self) -> list[int]:
        """Processes in qasup's leaf other than qasup."""
        try:
            data = os.pread(self._leaf_fd, 1 << 16, 0) if self._leaf_fd >= 0 else b""
        except OSError:
            return []
        return [pid for pid in map(int, data.split()) if pid != self._me]

    def unplace(self, pid: int) -> None:
        """Move a child that is not a service's (the guardian) out of the tree, back where qasup came from."""
        _write(os.path.join(self.base, "cgroup.procs"), str(pid))

    def retire(self, cgroup: Cgroup) -> None:
        """The instance's leader has exited: remove its cgroup now if empty, else at a later :meth:`make`."""
        if not cgroup.remove():
            with self._count_lock:
                self._retired.add(cgroup)

    def leave(self) -> None:
        """Move qasup back to the cgroup it came from (before the guardian kills what is left in the tree)."""
        _write(os.path.join(self.base, "cgroup.procs"), str(self._me))
        if self._leaf_fd >= 0:
            os.close(self._leaf_fd)
            self._leaf_fd = -1

    def close(self) -> bool:
        """Leave, kill whatever is still in the daemon's cgroup and remove it, with every instance's. False if
        processes stayed (stuck in the kernel) and the folder could not be removed."""
        self.leave()
        whole = Cgroup(self.root, self.version, self.controller == "freezer")
        for _ in range(50):
            if whole.remove():
                return True
            whole.kill()
            _pause(0.02)
        return whole.remove()


class Slot:
    """One spawn's place (see :meth:`CgroupTree.spawning`): :meth:`place` moves its child, and whatever the child
    forked before that, into the child's cgroup."""

    def __init__(self, tree: CgroupTree, leaf: str | None, tid: int, since: int = 0) -> None:
        self.tree = tree
        self.leaf = leaf     # this thread's own leaf, or None: qasup's leaf, under the tree's lock
        self.tid = tid
        self.since = since   # (qasup's leaf) clock ticks since boot when the slot was taken

    def _strays(self) -> list[int]:
        """What is in the slot besides the spawning thread: the child's tree, forked before it was placed."""
        if self.leaf is not None:
            text = _read(os.path.join(self.leaf, self.tree._threads)) or ""
            return [t for t in map(int, text.split()) if t != self.tid]   # a thread's id moves its whole process
        out = []
        for pid in self.tree._in_leaf():
            st = read_stat(pid)
            if st is not None and st.start >= self.since:
                out.append(pid)
            else:
                self.tree.unplace(pid)   # forked by qasup itself before this spawn, not through it
        return out

    def place(self, cgroup: Cgroup | None, pid: int) -> Cgroup | None:
        """Move the child ``pid`` and its tree so far into ``cgroup`` (None: out of the tree, for the guardian).
        The cgroup, or None (then removed) if nothing could be moved. Few system calls (each lets another thread
        take the GIL): one write and one read of the slot, in the common case."""
        target = cgroup.path if cgroup is not None else self.tree.base
        try:
            fd = os.open(os.path.join(target, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        moved = False
        try:
            moved = fd >= 0 and put_pid(fd, pid)
            if not moved and cgroup is not None and read_stat(pid) is not None:   # it runs, yet cannot be moved
                self.tree.broken = f"cannot move processes into {self.tree.kind}"
            for _ in range(100):   # until the slot holds only the spawning thread
                strays = self._strays()
                if not strays or fd < 0:
                    break
                for stray in strays:
                    moved = put_pid(fd, stray) or moved
        finally:
            if fd >= 0:
                os.close(fd)
        if cgroup is None or moved:
            return cgroup
        cgroup.remove()
        return None


def _ticks_now() -> int:
    """Now, in the clock ticks since boot that /proc/PID/stat gives start times in."""
    import time

    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def _pause(seconds: float) -> None:
    import time

    time.sleep(seconds)
