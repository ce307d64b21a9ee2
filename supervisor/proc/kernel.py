"""The few kernel facilities the process layer needs beyond ``os``: prctl, wait statuses, spawn errors.

prctl is resolved from libc once, in the parent: never in a child between fork and exec, where
loading a library could deadlock on a lock another thread held at fork time.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

__all__ = ["PR_SET_CHILD_SUBREAPER", "PR_SET_PDEATHSIG", "SpawnError", "exit_code", "libc_prctl", "release_memory",
           "set_subreaper"]

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
