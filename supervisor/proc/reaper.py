"""The one reaper of a qasup process, and the only way to spawn: :class:`Reaper` and its :class:`Child`.

Exactly one component reaps in a qasup process: the :class:`Reaper`. On every SIGCHLD (and once
at start and once at exit) it calls ``os.waitpid(-1, WNOHANG)`` until nothing is left, routes
each status to the :class:`Child` it belongs to and silently reaps (and counts) everything else:
orphans re-parented to qasup because it is PID 1 or a child subreaper.

Nothing else may wait for children in a qasup process: no ``Popen.wait``/``poll``, no
``subprocess.run``, no asyncio/anyio subprocess API (asyncio's child watcher included). A second
waiter steals statuses, and the loser then reports garbage (asyncio reports 255, ``Popen.wait``
reports 0).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from supervisor.proc.cgroup import Cgroup, CgroupTree
from supervisor.proc.flag import Flag
from supervisor.proc.kernel import exit_code, set_subreaper
from supervisor.proc.ledger import Ledger
from supervisor.proc.proctable import Snapshot, SnapshotCache, read_stat
from supervisor.proc.spawn import Credentials, launch_args, pdeathsig_setup, popen

__all__ = ["SPAWN_THREADS", "Child", "Reaper"]

SPAWN_THREADS = 4
"""Worker threads that :meth:`Reaper.spawn_async` forks from at most (they stay, idle, once started)."""


class Child:
    """One spawned service process (the leader of its own session and process group).

    ``returncode`` is None while it runs and becomes its exit code (128+n for signal n) when the
    :class:`Reaper` collects its status; :meth:`wait` waits for that. ``reaper`` is the Reaper that
    spawned it (None for a Child made by hand). ``cgroup`` is its own cgroup (see ``cgroup.py``), None where
    the daemon has none; it is removed once the leader has exited and it is empty.
    """

    __slots__ = ("pid", "cgroup", "tag", "argv", "started", "returncode", "reaper", "forced", "_start_ticks",
                 "_exited")

    def __init__(self, pid: int, tag: str, argv: Sequence[str], start_ticks: int | None,
                 cgroup: Cgroup | None = None) -> None:
        self.pid = pid
        self.cgroup = cgroup
        self.tag = tag
        self.argv = tuple(argv)
        self.started = time.monotonic()
        self.returncode: int | None = None
        self.reaper: Reaper | None = None
        self.forced = False   # a stop had to SIGKILL what was left of its tree
        self._start_ticks = start_ticks
        self._exited = Flag()   # lighter than anyio.Event: a stack holds one per running service

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} tag={self.tag!r} returncode={self.returncode}>"

    @property
    def exited(self) -> Flag:
        """Set once the reaper has collected the leader's status (``returncode`` is known then)."""
        return self._exited

    async def wait(self) -> int:
        """The leader's exit code, once the reaper has collected it."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def _set_status(self, status: int) -> None:
        self.returncode = exit_code(status)
        self._exited.set()

    def pid_recycled(self) -> bool:
        """True when the leader is reaped and its pid number now belongs to another process.

        While any process still has the leader's pid as its group or session id, the kernel
        cannot hand that number out again; so structural matches are only suspect when a
        process with that pid exists and started at another time.
        """
        if self.returncode is None:
            return False
        st = read_stat(self.pid)
        return st is not None and st.start != self._start_ticks

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the leader's process group (a gone group is not an error)."""
        if self.pid_recycled():
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Reaper:
    """The one component that reaps children in a qasup process; also the only way to spawn.

    Use ``async with Reaper.open() as reaper:``; spawn only from the event-loop thread.
    ``orphans_reaped`` counts statuses collected for processes that were not spawned here. ``cgroups`` (the
    daemon's :class:`~supervisor.proc.cgroup.CgroupTree`, or None) gives every spawn its own cgroup;
    ``ledger`` (set by the guardian) records every spawned process for the guardian.
    """

    def __init__(self, cgroups: CgroupTree | None = None) -> None:
        self.cgroups = cgroups
        self.ledger: Ledger | None = None
        self._children: dict[int, Child] = {}
        self._thread = threading.get_ident()
        self.orphans_reaped = 0
        self.subreaper = False
        self._snapshots = SnapshotCache()
        self._in_flight = 0                 # spawn_async calls between fork and registration
        self._held: dict[int, int] = {}     # pid -> status reaped while a spawn was in flight
        self._settled: anyio.Event | None = None   # set when no spawn is in flight (made only when awaited)
        self._spawn_threads: anyio.CapacityLimiter | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, *, subreaper: bool = True, cgroups: CgroupTree | None = None) -> AsyncIterator[Reaper]:
        """Start the SIGCHLD listener in its own task group; reap once more on the way out.

        ``subreaper=True`` also calls :func:`~supervisor.proc.kernel.set_subreaper` (``reaper.subreaper``
        tells whether it worked; as PID 1 it does not matter). The SIGCHLD handler is installed before
        this yields, so no child spawned inside the block can be missed.
        """
        reaper = cls(cgroups)
        if subreaper:
            reaper.subreaper = set_subreaper()
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(reaper._listen)
                try:
                    yield reaper
                except Exception as exc:  # re-raised below as-is, not wrapped in an ExceptionGroup
                    error = exc
                finally:
                    tg.cancel_scope.cancel()
        finally:
            reaper.reap()
        if error is not None:
            raise error

    async def _listen(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGCHLD) as signals:
            self.reap()  # children that exited before the handler was installed
            task_status.started()
            async for _ in signals:  # signals coalesce: every wake-up drains everything
                self.reap()

    def reap(self) -> int:
        """Collect every exit status that is ready now; returns how many were collected."""
        count = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return count
            except InterruptedError:
                continue
            if pid == 0:
                return count
            count += 1
            child = self._children.pop(pid, None)
            if child is not None:
                child._set_status(status)
                if child.cgroup is not None and self.cgroups is not None:
                    self.cgroups.retire(child.cgroup)   # removed now if empty, else later
            elif self._in_flight:
                self._held[pid] = status   # perhaps a child of a spawn that has not returned yet
            else:
                self.orphans_reaped += 1

    def running(self) -> list[Child]:
        """Children spawned here whose status has not been collected yet."""
        return list(self._children.values())

    def is_running(self, pid: int) -> bool:
        """Whether ``pid`` is a child spawned (and registered) here whose status has not been collected yet."""
        return pid in self._children

    @property
    def adopts_orphans(self) -> bool:
        """Whether orphans of services are re-parented to this process (it is a subreaper or PID 1)."""
        return self.subreaper or os.getpid() == 1

    def snapshot(self) -> Snapshot:
        """The /proc snapshot shared by every tree lookup made while it is fresh."""
        return self._snapshots.get(scope_all=not self.adopts_orphans)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str | Path,
        env: Mapping[str, str],
        stdout: int | None,
        stderr: int | None,
        tag: str,
        pdeathsig: bool = True,
        pass_fds: Sequence[int] = (),
        stdin: int | None = None,
        credentials: Credentials | None = None,
        track: bool = True,
    ) -> Child:
        """Start ``argv`` in its own session and process group; stdin is ``stdin`` (a file descriptor), else
        /dev/null.

        ``stdout``/``stderr`` are file descriptors (None: inherit qasup's; ``subprocess.STDOUT``
        works for stderr). ``env`` is the complete environment; ``QASUP_INSTANCE`` is set to
        the inherited value plus ``Child.tag`` = ``tag:<random hex>``. ``pdeathsig`` makes the
        kernel SIGKILL the child if qasup dies. ``credentials``: the user and groups it runs as (see
        :func:`~supervisor.proc.spawn.unit_credentials`). ``track`` (a process of the stack; False only for the
        guardian): it gets its own cgroup (``Child.cgroup``) when the reaper has a cgroup tree, and is recorded in
        the guardian's ledger. The pid is registered before this returns, so a child that exits at once is never
        mistaken for an orphan. Raises :class:`~supervisor.proc.kernel.SpawnError`.
        """
        if threading.get_ident() != self._thread:
            raise RuntimeError("Reaper.spawn must be called from the event-loop thread (PDEATHSIG is per thread)")
        args, where, environ, full_tag = launch_args(argv, cwd, env, tag, credentials)
        preexec = pdeathsig_setup(os.getpid()) if pdeathsig else None
        pid, start, cgroup = self._launch(args, where, environ, stdin, stdout, stderr, tuple(pass_fds), preexec,
                                          credentials, tag, track)
        return self._register(pid, full_tag, args, start, cgroup)

    async def spawn_async(
        self,
        argv: Sequence[str],
        *,
        cwd: str | Path,
        env: Mapping[str, str],
        stdout: int | None,
        stderr: int | None,
        tag: str,
        pass_fds: Sequence[int] = (),
        stdin: int | None = None,
        credentials: Credentials | None = None,
        track: bool = True,
    ) -> Child:
        """:meth:`spawn` without PDEATHSIG, done in a worker thread so that the event loop runs meanwhile.

        The parent of a vfork waits until the child has exec'd: about a millisecond on an idle machine, but
        tens of them when the CPUs are busy (a new task queues behind the running ones), and the event loop
        would stall for that long, delaying every other service's output, markers and exits. Since Python
        3.11.6 the wait does not hold the GIL. The cgroup is made, and the child moved into it, in that thread
        too. A child that exits before it is registered here is not lost: while spawns are in flight, statuses
        of unknown pids are held back and matched on registration. Not cancellable once started (the child
        exists and must be supervised). Raises :class:`~supervisor.proc.kernel.SpawnError`.
        """
        args, where, environ, full_tag = launch_args(argv, cwd, env, tag, credentials)
        run = functools.partial(self._launch, args, where, environ, stdin, stdout, stderr, tuple(pass_fds), None,
                                credentials, tag, track)
        self._in_flight += 1
        try:
            with anyio.CancelScope(shield=True):
                if self._spawn_threads is None:   # a few threads are plenty: each waits only for an exec
                    self._spawn_threads = anyio.CapacityLimiter(SPAWN_THREADS)
                pid, start, cgroup = await anyio.to_thread.run_sync(run, limiter=self._spawn_threads)
        except BaseException:
            self._in_flight -= 1
            if not self._in_flight:
                self._release_held()
            raise
        self._in_flight -= 1
        child = self._register(pid, full_tag, args, start, cgroup)
        status = self._held.pop(pid, None)
        if status is not None:   # it exited, and was reaped, before it was registered
            self._children.pop(pid, None)
            child._set_status(status)
            if cgroup is not None and self.cgroups is not None:
                self.cgroups.retire(cgroup)
        if not self._in_flight:
            self._release_held()
        return child

    def _launch(self, args: list[str], where: str, environ: dict[str, str], stdin: int | None,
                stdout: int | None, stderr: int | None, pass_fds: tuple[int, ...],
                preexec: Callable[[], None] | None, credentials: Credentials | None, tag: str,
                track: bool) -> tuple[int, int | None, Cgroup | None]:
        """Fork and exec (in whichever thread calls it), place the child in a new cgroup of its own (holding the
        tree's lock from the fork to the placement, see ``cgroup.py``) and record it in the ledger:
        ``(pid, start time, cgroup)``."""
        tree = self.cgroups
        if tree is None:
            pid = popen(args, where, environ, stdin, stdout, stderr, pass_fds, preexec, credentials)
            st = read_stat(pid)
            cgroup = None
        else:
            cgroup = tree.make(tag) if track else None
            with tree.spawning() as slot:   # see cgroup.py: nothing the child forks meanwhile is lost
                try:
                    pid = popen(args, where, environ, stdin, stdout, stderr, pass_fds, preexec, credentials)
                except BaseException:
                    if cgroup is not None:
                        cgroup.remove()
                    raise
                placed = slot.place(cgroup, pid)
                if cgroup is not None and placed is None:   # no cgroup after all: out of the tree
                    slot.place(None, pid)
                cgroup = placed
            st = read_stat(pid)
        ledger = self.ledger
        if track and ledger is not None and st is not None:
            ledger.note(pid, st.start, st.pgid, st.sid)
        return pid, (st.start if st is not None else None), cgroup

    def adopt(self, pid: int, tag: str, cgroup: Cgroup | None = None) -> Child | None:
        """Follow ``pid``, a process re-parented to qasup (a forking service's daemon): from now on its exit
        status goes to the returned :class:`Child`. None when it is not qasup's child now, or already reaped.
        ``cgroup``: the launcher's (the daemon is in it); the adopted process is recorded in the ledger."""
        st = read_stat(pid)
        if st is None or st.ppid != os.getpid() or pid in self._children:
            return None
        if self.ledger is not None:
            self.ledger.note_stat(st)
        child = self._register(pid, tag, [], st.start, cgroup)
        status = self._held.pop(pid, None)
        if status is not None:
            self._children.pop(pid, None)
            child._set_status(status)
        return child

    def _register(self, pid: int, full_tag: str, argv: list[str], start: int | None = None,
                  cgroup: Cgroup | None = None) -> Child:
        if start is None:
            st = read_stat(pid)
            start = st.start if st else None
        child = Child(pid, full_tag, argv, start, cgroup)
        child.reaper = self
        self._children[child.pid] = child
        return child

    def _release_held(self) -> None:
        """No spawn in flight: held statuses belonged to orphans after all."""
        self.orphans_reaped += len(self._held)
        self._held.clear()
        settled, self._settled = self._settled, None
        if settled is not None:
            settled.set()

    async def spawns_settled(self, timeout: float) -> bool:
        """Wait (up to ``timeout`` seconds) until no :meth:`spawn_async` is between its fork and its
        registration; whether none is. Until then a child of qasup that is unknown here may be one of them, not
        an orphan (``tree.anything_left`` would look for leftovers in all of /proc because of it)."""
        if self._in_flight:
            if self._settled is None:
                self._settled = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._settled.wait()
        return not self._in_flight
