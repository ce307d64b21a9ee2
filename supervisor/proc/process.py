"""Spawning, reaping and stopping service process trees: qasup's PID-1 duties.

Exactly one component reaps in a qasup process: the :class:`Reaper`. On every SIGCHLD (and once
at start and once at exit) it calls ``os.waitpid(-1, WNOHANG)`` until nothing is left, routes
each status to the :class:`Child` it belongs to and silently reaps (and counts) everything else:
orphans re-parented to qasup because it is PID 1 or a child subreaper.

Nothing else may wait for children in a qasup process: no ``Popen.wait``/``poll``, no
``subprocess.run``, no asyncio/anyio subprocess API. A second waiter steals statuses, and the
loser then reports garbage (asyncio reports 255, ``Popen.wait`` reports 0).

Stopping is tree-wide: :func:`members` finds every live process of a service (its process group,
its session, ``/proc`` descendants, and processes carrying the ``QASUP_INSTANCE`` tag that
:meth:`Reaper.spawn` injects into the environment, which survives setsid, double forks and the
leader's death), and :func:`terminate` signals all of them, then SIGKILLs what is left.
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
import anyio.to_thread

__all__ = [
    "TAG_VARIABLE",
    "Child",
    "Reaper",
    "RunTimeout",
    "SpawnError",
    "exit_code",
    "members",
    "run_to_completion",
    "set_subreaper",
    "terminate",
]

TAG_VARIABLE = "QASUP_INSTANCE"
"""Environment variable holding the instance tags of every qasup-spawned ancestor, space-separated."""

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_DISOWNED = -(2**31)  # a Popen returncode that makes Popen itself never call waitpid
_POLL_FIRST = 0.005  # first pause when polling /proc for a tree to vanish; doubles ...
_POLL_MAX = 0.05  # ... up to this
_KILL_RESEND = 0.5
_LEADER_RESCAN = 0.25  # while the leader runs, look for new members this often  # while waiting for SIGKILLed processes to vanish, re-send this often


class SpawnError(Exception):
    """A service could not be started: command not found, not executable, bad working directory."""


# --------------------------------------------------------------------------------------------
# small OS helpers


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once in the parent (never in a child between fork and exec)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def set_subreaper(enable: bool = True) -> bool:
    """Make this process a child subreaper (PR_SET_CHILD_SUBREAPER), so that orphans of services
    are re-parented to qasup (and reaped by its :class:`Reaper`) instead of to PID 1.

    Returns False where unsupported (not Linux, no prctl, refused). ``enable=False`` turns it off
    again (tests use that to leave the test process as they found it).
    """
    prctl = _prctl()
    if prctl is None:
        return False
    return prctl(_PR_SET_CHILD_SUBREAPER, 1 if enable else 0, 0, 0, 0) == 0


def exit_code(status: int) -> int:
    """A ``waitpid`` status as a shell would report it: the exit code, or 128+n for signal n."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255  # stopped/continued: never reported, as the reaper does not ask for WUNTRACED


def _read_all(path: str, limit: int = 1 << 22) -> bytes | None:
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


class _Stat:
    """The fields of /proc/PID/stat that tree discovery needs."""

    __slots__ = ("pid", "state", "ppid", "pgid", "sid", "start")

    def __init__(self, pid: int, state: bytes, ppid: int, pgid: int, sid: int, start: int) -> None:
        self.pid, self.state, self.ppid, self.pgid, self.sid, self.start = pid, state, ppid, pgid, sid, start

    @property
    def alive(self) -> bool:
        """Not a zombie (Z) or dead (X/x): it can still run code or hold resources."""
        return self.state not in (b"Z", b"X", b"x")


def _stat(pid: int) -> _Stat | None:
    """Parse /proc/PID/stat; None when the process is gone (processes vanish mid-walk)."""
    data = _read_all(f"/proc/{pid}/stat", 4096)
    if not data:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ")"
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return _Stat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def _all_stats() -> list[_Stat]:
    """Every process visible in /proc (empty when /proc is not mounted)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    stats = []
    for name in names:
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                stats.append(st)
    return stats


def _tags_of(pid: int) -> list[bytes]:
    """The instance tags in a process's initial environment (empty when unreadable or absent)."""
    data = _read_all(f"/proc/{pid}/environ")
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


def _signal_pid(pid: int, start: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` only if it is still the process seen in the scan (same start time).

    A pidfd pins the process, so a pid recycled between scan and kill is never hit.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):  # no pidfd support: best effort
        st = _stat(pid)
        if st is not None and st.start == start:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return
    try:
        st = _stat(pid)
        if st is not None and st.start == start:
            signal.pidfd_send_signal(fd, sig)
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# children


class Child:
    """One spawned service process (the leader of its own session and process group).

    ``returncode`` is None while it runs and becomes its exit code (128+n for signal n) when the
    :class:`Reaper` collects its status; :meth:`wait` waits for that.
    """

    def __init__(self, pid: int, tag: str, argv: Sequence[str], start_ticks: int | None) -> None:
        self.pid = pid
        self.tag = tag
        self.argv = tuple(argv)
        self.started = time.monotonic()
        self.returncode: int | None = None
        self._start_ticks = start_ticks
        self._exited = anyio.Event()
        self._reaper: Reaper | None = None

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} tag={self.tag!r} returncode={self.returncode}>"

    async def wait(self) -> int:
        """The leader's exit code, once the reaper has collected it."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def _set_status(self, status: int) -> None:
        self.returncode = exit_code(status)
        self._exited.set()

    def _pid_recycled(self) -> bool:
        """True when the leader is reaped and its pid number now belongs to another process.

        While any process still has the leader's pid as its group or session id, the kernel
        cannot hand that number out again; so structural matches are only suspect when a
        process with that pid exists and started at another time.
        """
        if self.returncode is None:
            return False
        st = _stat(self.pid)
        return st is not None and st.start != self._start_ticks

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the leader's process group (a gone group is not an error)."""
        if self._pid_recycled():
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class _Snapshot:
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
        self.by_pid: dict[int, _Stat] = {}
        self.kids: dict[int, list[int]] = {}
        self.by_group: dict[int, list[int]] = {}
        self.by_session: dict[int, list[int]] = {}
        for st in _all_stats():
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
            got = self._tags[pid] = _tags_of(pid)
        return got


def _snapshot(child: Child) -> _Snapshot:
    reaper = child._reaper
    if reaper is None:
        return _Snapshot(scope_all=True)
    snap = reaper._snapshot
    if snap is None or time.monotonic() - snap.taken > snap.max_age:
        snap = reaper._snapshot = _Snapshot(scope_all=not (reaper.subreaper or os.getpid() == 1))
    return snap


def _member_stats(child: Child) -> dict[int, _Stat]:
    """Live members of ``child``'s tree, keyed by pid (see :func:`members`)."""
    snap = _snapshot(child)
    if not snap.by_pid:  # no /proc: the leader is all we know
        return {}
    me = snap.me
    tag = child.tag.encode()
    roots: set[int] = set()
    if not child._pid_recycled():
        if child.pid in snap.by_pid:
            roots.add(child.pid)
        roots.update(snap.by_group.get(child.pid, ()))
        roots.update(snap.by_session.get(child.pid, ()))
    for pid in snap.tag_candidates():
        if pid not in roots and pid != child.pid:
            st = snap.by_pid[pid]
            if st.alive and tag in snap.tags(pid):
                roots.add(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found or pid == me:
            continue
        found.add(pid)
        todo.extend(snap.kids.get(pid, ()))
    # the snapshot may be a few ms old: report only what is alive now (same process: same start time)
    live: dict[int, _Stat] = {}
    for pid in found:
        if snap.by_pid[pid].alive:
            st = _stat(pid)
            if st is not None and st.alive and st.start == snap.by_pid[pid].start:
                live[pid] = st
    return live


def _own_children() -> set[int] | None:
    """qasup's direct children, from /proc/self/task/*/children (None where the kernel lacks that file)."""
    out: set[int] = set()
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        data = _read_all(f"/proc/self/task/{tid}/children", 1 << 20)
        if data is None:
            return None
        out.update(int(x) for x in data.split())
    return out


def anything_left(child: Child) -> bool:
    """Whether any process of ``child``'s tree may still be alive, after the leader exited.

    A fast path for the common case (checked at every exit): when qasup is a subreaper or PID 1, every
    live descendant of the leader is in its process group or was re-parented to qasup (or descends from
    one that was). So an empty group and no unknown children of qasup mean nothing is left, without a
    scan of /proc. Anything else falls back to :func:`members`.
    """
    reaper = child._reaper
    if reaper is None or not (reaper.subreaper or os.getpid() == 1) or child._pid_recycled():
        return bool(members(child))
    try:
        os.killpg(child.pid, 0)
        return bool(members(child))     # the group still has processes
    except ProcessLookupError:
        pass
    except PermissionError:
        return bool(members(child))
    kids = _own_children()
    if kids is None or kids - set(reaper._children):
        return bool(members(child))     # orphans (of this service or another): look closer
    return False


def members(child: Child) -> set[int]:
    """Every live (non-zombie) process that belongs to ``child``'s tree.

    The union of: the leader, its process group, its session, the /proc descendants of all of
    those, and processes whose environment carries ``child.tag`` in ``QASUP_INSTANCE`` (which
    finds setsid'd double-forked daemons even after the leader is gone) with their descendants.
    qasup itself is never a member. Empty when /proc is unavailable.
    """
    return set(_member_stats(child))


# --------------------------------------------------------------------------------------------
# the reaper


SPAWN_THREADS = 4
"""Worker threads that :meth:`Reaper.spawn_async` forks from at most (they stay, idle, once started)."""


class Reaper:
    """The one component that reaps children in a qasup process; also the only way to spawn.

    Use ``async with Reaper.open() as reaper:``; spawn only from the event-loop thread.
    ``orphans_reaped`` counts statuses collected for processes that were not spawned here.
    """

    def __init__(self) -> None:
        self._children: dict[int, Child] = {}
        self._thread = threading.get_ident()
        self.orphans_reaped = 0
        self.subreaper = False
        self._snapshot: _Snapshot | None = None
        self._in_flight = 0                 # spawn_async calls between fork and registration
        self._held: dict[int, int] = {}     # pid -> status reaped while a spawn was in flight
        self._spawn_threads: anyio.CapacityLimiter | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, *, subreaper: bool = True) -> AsyncIterator[Reaper]:
        """Start the SIGCHLD listener in its own task group; reap once more on the way out.

        ``subreaper=True`` also calls :func:`set_subreaper` (``reaper.subreaper`` tells whether
        it worked; as PID 1 it does not matter). The SIGCHLD handler is installed before this
        yields, so no child spawned inside the block can be missed.
        """
        reaper = cls()
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
            elif self._in_flight:
                self._held[pid] = status   # perhaps a child of a spawn that has not returned yet
            else:
                self.orphans_reaped += 1

    def running(self) -> list[Child]:
        """Children spawned here whose status has not been collected yet."""
        return list(self._children.values())

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
    ) -> Child:
        """Start ``argv`` in its own session and process group; stdin is ``stdin`` (a file descriptor), else
        /dev/null.

        ``stdout``/``stderr`` are file descriptors (None: inherit qasup's; ``subprocess.STDOUT``
        works for stderr). ``env`` is the complete environment; ``QASUP_INSTANCE`` is set to
        the inherited value plus ``Child.tag`` = ``tag:<random hex>``. ``pdeathsig`` makes the
        kernel SIGKILL the child if qasup dies. The pid is registered before this returns, so a
        child that exits at once is never mistaken for an orphan. Raises :class:`SpawnError`.
        """
        if threading.get_ident() != self._thread:
            raise RuntimeError("Reaper.spawn must be called from the event-loop thread (PDEATHSIG is per thread)")
        argv, cwd, environ, full_tag = _launch_args(argv, cwd, env, tag)
        preexec = _pdeathsig_setup(os.getpid()) if pdeathsig else None
        pid = _popen(argv, cwd, environ, stdin, stdout, stderr, tuple(pass_fds), preexec)
        return self._register(pid, full_tag, argv)

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
    ) -> Child:
        """:meth:`spawn` without PDEATHSIG, done in a worker thread so that the event loop runs meanwhile.

        The parent of a vfork waits until the child has exec'd: about a millisecond on an idle machine, but
        tens of them when the CPUs are busy (a new task queues behind the running ones), and the event loop
        would stall for that long, delaying every other service's output, markers and exits. Since Python
        3.11.6 the wait does not hold the GIL. A child that exits before it is registered here is not lost:
        while spawns are in flight, statuses of unknown pids are held back and matched on registration.
        Not cancellable once started (the child exists and must be supervised). Raises :class:`SpawnError`.
        """
        argv, cwd, environ, full_tag = _launch_args(argv, cwd, env, tag)
        run = functools.partial(_popen, argv, cwd, environ, stdin, stdout, stderr, tuple(pass_fds), None)
        self._in_flight += 1
        try:
            with anyio.CancelScope(shield=True):
                if self._spawn_threads is None:   # a few threads are plenty: each waits only for an exec
                    self._spawn_threads = anyio.CapacityLimiter(SPAWN_THREADS)
                pid = await anyio.to_thread.run_sync(run, limiter=self._spawn_threads)
        except BaseException:
            self._in_flight -= 1
            if not self._in_flight:
                self._release_held()
            raise
        self._in_flight -= 1
        child = self._register(pid, full_tag, argv)
        status = self._held.pop(pid, None)
        if status is not None:   # it exited, and was reaped, before it was registered
            self._children.pop(pid, None)
            child._set_status(status)
        if not self._in_flight:
            self._release_held()
        return child

    def _register(self, pid: int, full_tag: str, argv: list[str]) -> Child:
        st = _stat(pid)
        child = Child(pid, full_tag, argv, st.start if st else None)
        child._reaper = self
        self._children[child.pid] = child
        return child

    def _release_held(self) -> None:
        """No spawn in flight: held statuses belonged to orphans after all."""
        self.orphans_reaped += len(self._held)
        self._held.clear()


def _launch_args(argv: Sequence[str], cwd: str | Path, env: Mapping[str, str],
                 tag: str) -> tuple[list[str], str, dict[str, str], str]:
    """Checked argv and cwd, and the environment with the child's tag added (see :meth:`Reaper.spawn`)."""
    if not argv:
        raise SpawnError("cannot start a service with an empty command")
    argv = [os.fspath(a) for a in argv]
    cwd = os.fspath(cwd)
    if not os.path.isdir(cwd):
        why = "does not exist" if not os.path.exists(cwd) else "is not a directory"
        raise SpawnError(f"cannot start {argv[0]!r}: working directory {cwd!r} {why}")
    full_tag = f"{tag}:{os.urandom(8).hex()}"
    environ = dict(env)
    inherited = environ.get(TAG_VARIABLE, "").strip()
    environ[TAG_VARIABLE] = f"{inherited} {full_tag}" if inherited else full_tag
    return argv, cwd, environ, full_tag


def _popen(argv: list[str], cwd: str, environ: dict[str, str], stdin: int | None, stdout: int | None,
           stderr: int | None, pass_fds: tuple[int, ...], preexec: Callable[[], None] | None) -> int:
    """Fork and exec in a new session; returns the pid, disowned (only the Reaper waits for it)."""
    import subprocess  # here, not at module top: CLI verbs that never spawn skip its import cost

    try:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environ,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=stdout,
            stderr=stderr,
            close_fds=True,
            pass_fds=pass_fds,
            start_new_session=True,
            preexec_fn=preexec,
        )
    except OSError as exc:
        raise SpawnError(_os_error_message(argv[0], cwd, environ, exc)) from None
    except (ValueError, TypeError) as exc:  # NUL bytes, non-string environment values
        raise SpawnError(f"cannot start {argv[0]!r}: {exc}") from None
    except subprocess.SubprocessError as exc:  # the preexec hook failed
        raise SpawnError(f"cannot start {argv[0]!r}: {exc}") from None
    # Disown: Popen.__del__ and subprocess._cleanup must never waitpid on our pid.
    popen.returncode = _DISOWNED
    return popen.pid


def _pdeathsig_setup(parent: int) -> Callable[[], None]:
    """The preexec hook: PDEATHSIG=SIGKILL, resolved in the parent; bails out if the parent is
    already gone (it could have died between fork and prctl, and then no signal would come)."""
    prctl = _prctl()
    if prctl is None:
        raise SpawnError("PR_SET_PDEATHSIG is not available on this system; spawn with pdeathsig=False")
    getppid, kill, getpid, sigkill = os.getppid, os.kill, os.getpid, int(signal.SIGKILL)

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if getppid() != parent:
            kill(getpid(), sigkill)

    return setup


def _os_error_message(command: str, cwd: str, env: Mapping[str, str], exc: OSError) -> str:
    """A one-line reason why exec (or chdir) failed, naming the path that is at fault."""
    prefix = f"cannot start {command!r}"
    if exc.filename is not None and os.fspath(exc.filename) == cwd != command:
        return f"{prefix}: working directory {cwd!r}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError) and "/" not in command:
        return f"{prefix}: command not found in PATH={env.get('PATH', os.defpath)}"
    path = os.fspath(exc.filename) if exc.filename is not None else command
    if "/" in command and not os.path.isabs(path):
        path = os.path.join(cwd, path)
    if isinstance(exc, FileNotFoundError):
        if os.path.exists(path):  # e.g. a script whose #! interpreter is missing
            return f"{prefix}: {path}: its #! interpreter or a library it needs was not found"
        return f"{prefix}: {path}: no such file"
    if isinstance(exc, PermissionError):
        if os.path.isdir(path):
            return f"{prefix}: {path}: is a directory"
        return f"{prefix}: {path}: permission denied (is it executable?)"
    return f"{prefix}: {path}: {exc.strerror or exc}"


# --------------------------------------------------------------------------------------------
# stopping and running to completion


class _Stopper:
    """State of one :func:`terminate`: which processes were seen as members and which got the
    current signal. Once seen, a process stays tracked until it is a zombie or gone: a dying
    process loses its memory map (so its environment tag becomes unreadable) before it turns
    into a zombie, and it may still hold files and devices (GPU memory) until then."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.tracked: dict[int, int] = {}  # pid -> start time
        self.signalled: set[tuple[int, int]] = set()

    def live(self) -> dict[int, int]:
        """Every live member now: a fresh scan plus tracked processes that still run."""
        for pid, st in _member_stats(self.child).items():
            self.tracked[pid] = st.start
        for pid, start in list(self.tracked.items()):
            st = _stat(pid)
            if st is None or st.start != start or not st.alive:
                del self.tracked[pid]
        return dict(self.tracked)

    def send(self, sig: int, live: dict[int, int]) -> None:
        """Send ``sig`` to every member that has not had it yet."""
        for pid, start in live.items():
            if (pid, start) not in self.signalled:
                self.signalled.add((pid, start))
                _signal_pid(pid, start, sig)

    async def wait_gone(self, sig: int, deadline: float) -> bool:
        """Poll until the leader is reaped and no member is alive (True), or until ``deadline``
        (monotonic) passes (False); members that appear meanwhile get ``sig``."""
        pause = _POLL_FIRST
        while True:
            if self.child.returncode is None:
                # the leader runs: wait for its exit (an event), rescanning now and then for members
                # that appeared meanwhile (they get the signal too)
                now = time.monotonic()
                if now >= deadline:
                    return False
                with anyio.move_on_after(min(_LEADER_RESCAN, deadline - now)):
                    await self.child._exited.wait()
                if self.child.returncode is None:
                    self.send(sig, self.live())
                    continue
            live = self.live()
            if not live:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            self.send(sig, live)
            await anyio.sleep(min(pause, deadline - now))
            pause = min(pause * 2, _POLL_MAX)


async def terminate(child: Child, sig: int, timeout: float) -> int:
    """Stop ``child``'s whole tree; returns the leader's exit code.

    Sends ``sig`` to the process group and to every member (members that appear later get it
    too), waits up to ``timeout`` seconds for the leader and all members to be gone (zombies
    count as gone), then sends SIGKILL to the group and all members (again every 0.5 s) until
    none remain. Needs the :class:`Reaper` running. It does not give up on processes that
    survive SIGKILL (stuck in the kernel); bound it with a cancel scope if that matters.
    """
    stopper = _Stopper(child)
    if child.returncode is None:
        child.signal_group(sig)
    stopper.send(sig, stopper.live())
    if await stopper.wait_gone(sig, time.monotonic() + timeout):
        return child.returncode  # type: ignore[return-value]
    while True:
        if child.returncode is None:
            child.signal_group(signal.SIGKILL)
        stopper.signalled.clear()
        stopper.send(signal.SIGKILL, stopper.live())
        if await stopper.wait_gone(signal.SIGKILL, time.monotonic() + _KILL_RESEND):
            return child.returncode  # type: ignore[return-value]


class RunTimeout(TimeoutError):
    """:func:`run_to_completion` ran out of time; ``output`` holds the tail captured so far."""

    def __init__(self, message: str, output: bytes) -> None:
        super().__init__(message)
        self.output = output


async def run_to_completion(
    reaper: Reaper,
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    timeout: float,
    tag: str,
    output_limit: int = 65536,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 2.0,
    pdeathsig: bool = True,
) -> tuple[int, bytes]:
    """Run a command to its end (``[prepare]`` commands, exec probes): ``(exit code, output)``.

    stdout and stderr go to one pipe; the last ``output_limit`` bytes are returned. When the
    leader exits, processes it left behind are terminated (``stop_signal``, then SIGKILL after
    ``stop_timeout``). After ``timeout`` seconds the whole tree is terminated the same way and
    :class:`RunTimeout` (a ``TimeoutError``) is raised. Raises :class:`SpawnError`.
    """
    read_fd, write_fd = os.pipe()
    try:
        try:
            if pdeathsig:
                child = reaper.spawn(argv, cwd=cwd, env=env, stdout=write_fd, stderr=write_fd, tag=tag)
            else:
                child = await reaper.spawn_async(argv, cwd=cwd, env=env, stdout=write_fd, stderr=write_fd, tag=tag)
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        buf = bytearray()
        eof = anyio.Event()

        async def drain() -> None:
            while True:
                await anyio.wait_readable(read_fd)
                try:
                    data = os.read(read_fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    eof.set()
                    return
                buf.extend(data)
                if len(buf) > 2 * output_limit:
                    del buf[: len(buf) - output_limit]

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            try:
                with anyio.move_on_after(timeout) as scope:
                    await child.wait()
            finally:
                # also when cancelled from outside: never leave the command running
                with anyio.CancelScope(shield=True):
                    code = await terminate(child, stop_signal, stop_timeout)
            # every writer is gone now, unless the pipe leaked to a process outside the tree
            with anyio.move_on_after(0.5):
                await eof.wait()
            tg.cancel_scope.cancel()
        output = bytes(buf[-output_limit:]) if output_limit > 0 else b""
    finally:
        os.close(read_fd)
    if scope.cancelled_caught:
        raise RunTimeout(f"{argv[0]!r} did not finish within {timeout:g}s", output)
    return code, output
