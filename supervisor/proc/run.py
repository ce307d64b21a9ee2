"""Running a command to its end (``[prepare]`` commands, exec probes): :func:`run_to_completion`.

The command is spawned and reaped by the :class:`~supervisor.proc.reaper.Reaper` like any service
(never ``subprocess.run``, which would wait for it itself), its output is captured through one pipe,
and its whole tree is stopped when the leader exits or the time is up.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

from supervisor.proc.kernel import SpawnError, out_of_fds, out_of_fds_text
from supervisor.proc.reaper import Reaper
from supervisor.proc.spawn import Credentials
from supervisor.proc.stop import terminate

__all__ = ["RunTimeout", "run_to_completion"]


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
    credentials: Credentials | None = None,
) -> tuple[int, bytes]:
    """Run a command to its end: ``(exit code, output)``.

    stdout and stderr go to one pipe; the last ``output_limit`` bytes are returned. When the
    leader exits, processes it left behind are terminated (``stop_signal``, then SIGKILL after
    ``stop_timeout``). After ``timeout`` seconds the whole tree is terminated the same way and
    :class:`RunTimeout` (a ``TimeoutError``) is raised. ``credentials``: run as that user (a unit's ``user``:
    its ``[prepare]`` command and exec probes run as the service does). Raises
    :class:`~supervisor.proc.kernel.SpawnError`.
    """
    try:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    except OSError as exc:
        raise SpawnError(f"cannot start {argv[0]!r}: {out_of_fds_text(exc) if out_of_fds(exc) else exc}") from None
    try:
        try:
            if pdeathsig:
                child = reaper.spawn(argv, cwd=cwd, env=env, stdout=write_fd, stderr=write_fd, tag=tag,
                                     credentials=credentials)
            else:
                child = await reaper.spawn_async(argv, cwd=cwd, env=env, stdout=write_fd, stderr=write_fd, tag=tag,
                                                 credentials=credentials)
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
