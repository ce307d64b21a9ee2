"""The guardian: a small process that kills the whole stack if qasup itself dies, even by SIGKILL.

It waits on a pipe whose only write end qasup holds; at EOF (qasup exited, however it died) it kills, round
after round until nothing is left (see ``guardkill.py``): everything in the daemon's cgroup (when qasup has
one), every process qasup recorded in its :class:`~supervisor.proc.ledger.Ledger` (pids with their start
times, and the process groups and sessions they lead), and every process whose environment carries
``QASUP_DAEMON=<daemon id>`` (:data:`DAEMON_VARIABLE`). The tag alone is not enough: nginx and redis overwrite
their environment with their process title. After a clean shutdown there is nothing left to kill.

The waiting is done by /bin/sh (about 1 MiB resident, against 8 MiB for an idle Python); only at EOF does it
exec Python (-I -S: no site, no imports beyond os/sys/time). Without /bin/sh, Python waits itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from supervisor.proc.kernel import SpawnError
from supervisor.proc.ledger import Ledger
from supervisor.proc.reaper import Child, Reaper

__all__ = ["DAEMON_VARIABLE", "guardian", "guardian_argv"]

DAEMON_VARIABLE = "QASUP_DAEMON"
"""Set in every process qasup starts, to the daemon's id: the guardian finds them by it in /proc."""

_GUARD_FILE = Path(__file__).with_name("guardkill.py")
# stdin is the pipe; `read` returns non-zero at EOF; then "$0" is Python, "$1" the code, "$2".. its arguments
_GUARD_SH = 'while read -r _; do :; done; exec "$0" -I -S -c "$1" 0 "$2" "$3" "$4" "$5"'


def guardian_argv(daemon_id: str, shell: str | None = "/bin/sh", *, cgroup: str | None = None,
                  ledger_fds: Sequence[int] = (), exclude: Sequence[int] = ()) -> list[str]:
    """The guardian's command line; its stdin must be the read end of the pipe, and ``ledger_fds`` inherited.

    ``cgroup``: the daemon's cgroup folder; ``exclude``: pids, groups and sessions never to kill (qasup's)."""
    code = _GUARD_FILE.read_text(encoding="utf-8")
    args = [daemon_id, cgroup or "-", ",".join(map(str, ledger_fds)) or "-", ",".join(map(str, exclude)) or "-"]
    if shell is not None and os.access(shell, os.X_OK):
        return [shell, "-c", _GUARD_SH, sys.executable, code, *args]
    return [sys.executable, "-I", "-S", "-c", code, "0", *args]


@asynccontextmanager
async def guardian(reaper: Reaper, daemon_id: str, say: Callable[[str], None]) -> AsyncIterator[Ledger | None]:
    """Run the guardian for the life of the block (yielding its ledger, also set as ``reaper.ledger`` so that
    every spawn is recorded); on a clean exit, wait (briefly) until it is gone. It knows the daemon's cgroup
    tree from ``reaper.cgroups``.

    A guardian that cannot be started is said (``say``) and the block runs without one (yielding None)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)   # never hold qasup's stdout open after it died
    env = {k: v for k, v in os.environ.items() if k != DAEMON_VARIABLE}
    child: Child | None
    ledger: Ledger | None = None
    try:
        ledger = Ledger()
        me = os.getpid()
        cgroup = reaper.cgroups.root if reaper.cgroups is not None else None
        argv = guardian_argv(daemon_id, cgroup=cgroup, ledger_fds=ledger.fds,
                             exclude=sorted({me, os.getsid(0), os.getpgid(0)}))
        child = reaper.spawn(argv, cwd="/", env=env, stdin=read_fd, stdout=null, stderr=null,
                             tag="qasup-guardian", pdeathsig=False, pass_fds=ledger.fds, track=False)
    except (SpawnError, OSError) as e:
        child = None
        if ledger is not None:
            ledger.close()
            ledger = None
        say(f"no guardian ({e}): if qasup is killed with SIGKILL, its services will outlive it")
    finally:
        os.close(read_fd)
        os.close(null)
    reaper.ledger = ledger
    try:
        yield ledger
    finally:
        reaper.ledger = None
        if reaper.cgroups is not None:
            reaper.cgroups.leave()   # out of the tree before the guardian kills what is left in it
        os.close(write_fd)
        if child is not None:
            with anyio.move_on_after(2.0, shield=True):
                await child.wait()
        if ledger is not None:
            ledger.close()
