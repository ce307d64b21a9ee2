"""The guardian: a small process that kills the whole stack if qasup itself dies, even by SIGKILL.

Every process qasup starts carries ``QASUP_DAEMON=<daemon id>`` (:data:`DAEMON_VARIABLE`) in its environment.
The guardian waits on a pipe whose only write end qasup holds; at EOF (qasup exited, however it died) it
SIGKILLs every process whose environment carries this daemon's id: services, their setsid'd daemons and
grandchildren. After a clean shutdown there is nothing left to kill.

The waiting is done by /bin/sh (about 1 MiB resident, against 8 MiB for an idle Python); only at EOF does it
exec Python (-I -S: no site, no imports beyond os/time) to walk /proc. Without /bin/sh, Python waits itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from supervisor.proc.kernel import SpawnError
from supervisor.proc.reaper import Child, Reaper

__all__ = ["DAEMON_VARIABLE", "guardian", "guardian_argv"]

DAEMON_VARIABLE = "QASUP_DAEMON"
"""Set in every process qasup starts, to the daemon's id: the guardian finds them by it in /proc."""

# argv: [fd to read until EOF, daemon id]
_GUARD_CODE = f"""
import os, sys, time
fd, needle = int(sys.argv[1]), ("{DAEMON_VARIABLE}=" + sys.argv[2]).encode()
try:
    while os.read(fd, 4096):
        pass
except OSError:
    pass
me = os.getpid()
for _ in range(40):
    hit = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                env = f.read().split(b"\\0")
        except OSError:
            continue
        if needle in env:
            hit += 1
            try:
                os.kill(int(name), 9)
            except OSError:
                pass
    if not hit:
        break
    time.sleep(0.05)
"""
# stdin is the pipe; `read` returns non-zero at EOF; then "$0" is Python, "$1" the code, "$2" the daemon id
_GUARD_SH = 'while read -r _; do :; done; exec "$0" -I -S -c "$1" 0 "$2"'


def guardian_argv(daemon_id: str, shell: str | None = "/bin/sh") -> list[str]:
    """The guardian's command line; its stdin must be the read end of the pipe."""
    if shell is not None and os.access(shell, os.X_OK):
        return [shell, "-c", _GUARD_SH, sys.executable, _GUARD_CODE, daemon_id]
    return [sys.executable, "-I", "-S", "-c", _GUARD_CODE, "0", daemon_id]


@asynccontextmanager
async def guardian(reaper: Reaper, daemon_id: str, say: Callable[[str], None]) -> AsyncIterator[None]:
    """Run the guardian for the life of the block; on a clean exit, wait (briefly) until it is gone.

    A guardian that cannot be started is said (``say``) and the block runs without one."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)   # never hold qasup's stdout open after it died
    env = {k: v for k, v in os.environ.items() if k != DAEMON_VARIABLE}
    child: Child | None
    try:
        child = reaper.spawn(guardian_argv(daemon_id), cwd="/", env=env, stdin=read_fd, stdout=null,
                             stderr=null, tag="qasup-guardian", pdeathsig=False)
    except SpawnError as e:
        child = None
        say(f"no guardian ({e}): if qasup is killed with SIGKILL, its services will outlive it")
    finally:
        os.close(read_fd)
        os.close(null)
    try:
        yield
    finally:
        os.close(write_fd)
        if child is not None:
            with anyio.move_on_after(2.0, shield=True):
                await child.wait()
