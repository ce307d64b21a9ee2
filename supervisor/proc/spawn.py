"""How a service process is started: checked arguments, fork and exec in a new session (as the unit's user),
disowned.

The pid that :func:`popen` returns is disowned: ``subprocess`` never waits for it (not in
``Popen.__del__``, not in ``subprocess._cleanup``), because only the
:class:`~supervisor.proc.reaper.Reaper` may wait for children. Errors become one-line
:class:`~supervisor.proc.kernel.SpawnError` messages naming the path at fault.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.config.accounts import AccountError, Credentials, credentials_for
from supervisor.proc.kernel import HELD_SIGNALS, PR_SET_PDEATHSIG, SpawnError, libc_prctl, out_of_fds, out_of_fds_text
from supervisor.proc.proctable import add_tag

if TYPE_CHECKING:
    from supervisor.plan.resolve import ResolvedUnit

__all__ = ["Credentials", "launch_args", "pdeathsig_setup", "popen", "unit_credentials"]

_DISOWNED = -(2**31)  # a Popen returncode that makes Popen itself never call waitpid


def unit_credentials(unit: ResolvedUnit) -> Credentials | None:
    """Who the unit's processes run as (None: as qasup), looked up now; raises :class:`SpawnError`
    (``FILE: user: unknown user 'x' ...``, or qasup is not root)."""
    spec = unit.spec
    if spec.user is None:
        return None
    try:
        return credentials_for(spec, unit.env, os.environ)
    except AccountError as e:
        raise SpawnError(f"{spec.file_of(e.key)}: {e.key}: {e}") from None


def launch_args(argv: Sequence[str], cwd: str | Path, env: Mapping[str, str],
                tag: str, credentials: Credentials | None = None) -> tuple[list[str], str, dict[str, str], str]:
    """Checked argv and cwd, the environment with the child's tag added (and the user's HOME, USER and LOGNAME
    as ``credentials`` say), and that tag (``tag:<random hex>``)."""
    if not argv:
        raise SpawnError("cannot start a service with an empty command")
    args = [os.fspath(a) for a in argv]
    where = os.fspath(cwd)
    if not os.path.isdir(where):
        why = "does not exist" if not os.path.exists(where) else "is not a directory"
        raise SpawnError(f"cannot start {args[0]!r}: working directory {where!r} {why}")
    full_tag = f"{tag}:{os.urandom(8).hex()}"
    environ = dict(env)
    if credentials is not None:
        environ.update(credentials.env)
    add_tag(environ, full_tag)
    return args, where, environ, full_tag


def popen(argv: list[str], cwd: str, environ: dict[str, str], stdin: int | None, stdout: int | None,
          stderr: int | None, pass_fds: tuple[int, ...], preexec: Callable[[], None] | None,
          credentials: Credentials | None = None) -> int:
    """Fork and exec in a new session; returns the pid, disowned (only the Reaper waits for it).

    ``credentials``: the child calls setgroups, setgid and setuid before exec (CPython's own code between fork
    and exec, no Python runs there; Popen uses fork rather than vfork then, about a millisecond more)."""
    import subprocess  # here, not at module top: CLI verbs that never spawn skip its import cost

    switch = credentials if credentials is not None and credentials.switch else None
    # a child inherits the forking thread's signal mask across exec: never hand it the signals that `qasup up`
    # holds during start-up (a worker thread started then would still block them)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, ()).intersection(HELD_SIGNALS)
    if held:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    try:
        child = subprocess.Popen(
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
            user=None if switch is None else switch.uid,
            group=None if switch is None else switch.gid,
            extra_groups=None if switch is None else list(switch.groups),
        )
    except OSError as exc:
        text = _os_error_message(argv[0], cwd, environ, exc)
        if switch is not None and isinstance(exc, PermissionError):
            text += f" (running as {switch.name}, uid {switch.uid}, gid {switch.gid})"
        raise SpawnError(text) from None
    except (ValueError, TypeError) as exc:  # NUL bytes, non-string environment values
        raise SpawnError(f"cannot start {argv[0]!r}: {exc}") from None
    except subprocess.SubprocessError as exc:  # the preexec hook failed
        raise SpawnError(f"cannot start {argv[0]!r}: {exc}") from None
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
    # Disown: Popen.__del__ and subprocess._cleanup must never waitpid on our pid.
    child.returncode = _DISOWNED
    return child.pid


def pdeathsig_setup(parent: int) -> Callable[[], None]:
    """The preexec hook: PDEATHSIG=SIGKILL, resolved in the parent; bails out if the parent is
    already gone (it could have died between fork and prctl, and then no signal would come).

    PDEATHSIG fires when the *thread* that forked the child exits, not the process: so spawn with
    it only from a thread that lives as long as qasup (the event-loop thread)."""
    prctl = libc_prctl()
    if prctl is None:
        raise SpawnError("PR_SET_PDEATHSIG is not available on this system; spawn with pdeathsig=False")
    getppid, kill, getpid, sigkill = os.getppid, os.kill, os.getpid, int(signal.SIGKILL)

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if getppid() != parent:
            kill(getpid(), sigkill)

    return setup


def _os_error_message(command: str, cwd: str, env: Mapping[str, str], exc: OSError) -> str:
    """A one-line reason why exec (or chdir) failed, naming the path that is at fault."""
    prefix = f"cannot start {command!r}"
    if out_of_fds(exc):
        return f"{prefix}: {out_of_fds_text(exc)}"
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
