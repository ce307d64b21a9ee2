"""The few kernel facilities the process layer needs beyond ``os``: prctl, wait statuses, spawn errors, the
open-file limit, and holding the shutdown signals during start-up.

prctl is resolved from libc once, in the parent: never in a child between fork and exec, where
loading a library could deadlock on a lock another thread held at fork time.

Importing this module costs nothing beyond ``os`` and ``functools``: ``python -m supervisor up`` imports it
first thing, to block SIGTERM/SIGINT/SIGHUP before anything else (see :func:`hold_signals`).
"""

from __future__ import annotations

import errno
import functools
import os

TYPE_CHECKING = False   # typing is not imported: this module is loaded before anything else by ``qasup up``
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FD_LIMIT_CAP", "FD_RESERVE", "HELD_SIGNALS", "PR_SET_CHILD_SUBREAPER", "PR_SET_PDEATHSIG", "SpawnError",
           "exit_code", "fd_limit", "fd_shortage", "hold_signals", "libc_prctl", "out_of_fds", "out_of_fds_text",
           "raise_fd_limit", "release_memory", "release_signals", "set_subreaper", "with_fds_text"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class SpawnError(Exception):
    """A service could not be started: command not found, not executable, bad working directory."""


@functools.cache
def libc_prctl() -> Callable[..., int] | None:
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
    are re-parented to qasup (and reaped by its :class:`~supervisor.proc.reaper.Reaper`) instead of to PID 1.

    Returns False where unsupported (not Linux, no prctl, refused). ``enable=False`` turns it off
    again (tests use that to leave the test process as they found it).
    """
    prctl = libc_prctl()
    if prctl is None:
        return False
    return prctl(PR_SET_CHILD_SUBREAPER, 1 if enable else 0, 0, 0, 0) == 0


def exit_code(status: int) -> int:
    """A ``waitpid`` status as a shell would report it: the exit code, or 128+n for signal n."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255  # stopped/continued: never reported, as the reaper does not ask for WUNTRACED


def release_memory() -> None:
    """Give the heap that start-up used (imports, plan, config) back to the system: qasup idles for days."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):   # not glibc
        pass


# ------------------------------------------------------------------ the signals held during start-up

HELD_SIGNALS = (15, 2, 1)   # SIGTERM, SIGINT, SIGHUP (numbers: the signal module costs an enum import)
"""The signals ``qasup up`` blocks from its first instruction until its handlers are in place: as PID 1 the
kernel drops a signal that has no handler, and before that SIGINT would be a KeyboardInterrupt mid-import."""


def hold_signals() -> None:
    """Block :data:`HELD_SIGNALS` in this thread (and in threads it starts from now on): they stay pending,
    not lost, until :func:`release_signals`. Children must not inherit the mask: release before spawning."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)


def release_signals() -> None:
    """Unblock :data:`HELD_SIGNALS` in this thread: what arrived meanwhile is delivered now, to the handlers
    installed by then."""
    import signal

    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


# ------------------------------------------------------------------ file descriptors

FD_LIMIT_CAP = 1 << 20
"""The soft RLIMIT_NOFILE is raised to the hard limit, but not above this (services inherit it, and some
programs walk every possible descriptor at start)."""

FD_RESERVE = 16
"""Descriptors a start leaves free for qasup itself (control connections, /proc reads, probes, log reopens):
a start that would leave fewer fails with an out-of-descriptors message instead of starving the daemon."""

_COUNT_BELOW = 1 << 16   # descriptors are counted before a start only under a limit this low (listing costs)
_PER_START = 32          # descriptors assumed for a start when trusting an earlier count (generous: a start takes ~3)
_trusted = [0, 0]        # [limit at the last count, starts that may go ahead before counting again]


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE (-1 where unknown or unlimited)."""
    import resource

    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return -1
    return -1 if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit(cap: int = FD_LIMIT_CAP) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most ``cap``), as supervisord's ``minfds`` does;
    never lowers it. Returns ``(soft, hard)`` as they are afterwards (-1: unlimited)."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return -1, -1
    inf = resource.RLIM_INFINITY
    target = cap if hard == inf else min(hard, cap)
    if soft != inf and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return (-1 if soft == inf else soft), (-1 if hard == inf else hard)


def out_of_fds(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or the OSError it was raised from) is EMFILE or ENFILE."""
    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def out_of_fds_text(exc: BaseException | None = None) -> str:
    """``out of file descriptors (EMFILE, limit 64)``: what a person reads for an EMFILE/ENFILE."""
    name = "ENFILE, the system's file table is full" if (
        isinstance(exc, OSError) and exc.errno == errno.ENFILE) else f"EMFILE, limit {fd_limit()}"
    return f"out of file descriptors ({name})"


def with_fds_text(message: str, exc: BaseException) -> str:
    """``message`` (an error's text) with its "Too many open files" put as :func:`out_of_fds_text` says it."""
    cause = exc
    while cause is not None and not (isinstance(cause, OSError) and out_of_fds(cause)):
        cause = cause.__cause__ or cause.__context__   # type: ignore[assignment]
    if not isinstance(cause, OSError) or not cause.strerror:
        return f"{message}: {out_of_fds_text()}"
    if cause.strerror in message:
        return message.replace(cause.strerror, out_of_fds_text(cause))
    return f"{message}: {out_of_fds_text(cause)}"


def fd_shortage(reserve: int = FD_RESERVE) -> str | None:
    """Why a start should not take more descriptors now (fewer than ``reserve`` + 4 would be left), else None.

    Counted (a listing of /proc/self/fd) only when the limit is low enough for that to matter."""
    limit = fd_limit()
    if limit < 0 or limit >= _COUNT_BELOW:
        return None
    if _trusted[0] == limit and _trusted[1] > 0:   # the last count left plenty: no listing for every start
        _trusted[1] -= 1
        return None
    try:
        used = len(os.listdir("/proc/self/fd")) - 1   # less the listing's own descriptor
    except OSError as exc:
        return f"cannot start: {out_of_fds_text(exc)}" if out_of_fds(exc) else None
    free = limit - used
    _trusted[:] = [limit, max(0, free - 2 * reserve) // _PER_START]
    if free >= reserve + 4:
        return None
    return (f"cannot start: out of file descriptors (EMFILE, limit {limit}: {used} in use, {reserve} kept for qasup "
            f"itself); raise the limit (ulimit -n, docker run --ulimit nofile=N)")
