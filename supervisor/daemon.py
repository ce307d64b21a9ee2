"""``qasup up``: the composition root. Wires the reaper, the guardian, the engine, the control API, signals
and echo, from a plan and a :class:`DaemonOptions`.

This is the only module that knows both the engine and the API: the engine never imports the API, the API
knows only the :class:`~supervisor.control.controller.Controller` protocol, and the CLI reaches all this only
through the socket.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from supervisor.control.listen import DaemonAlreadyRunning, ListenError
from supervisor.control.server import ServeInfo, serve
from supervisor.engine.engine import Engine
from supervisor.engine.errors import EngineError
from supervisor.logs.echo import Echo
from supervisor.plan.result import Plan
from supervisor.proc.guardian import guardian
from supervisor.proc.reaper import Reaper
from supervisor.protocol import DEFAULT_SOCKET_NAME, MIN_TOKEN_LENGTH, SOCKET_ENV, TOKEN_ENV, Exit, parse_hostport

__all__ = ["HANDLED_SIGNALS", "DaemonOptions", "OptionsError", "run_daemon", "socket_path"]

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGQUIT)

Say = Callable[[str], None]
"""How the daemon speaks: one ``[qasup] ...`` message on its stdout (through the echo)."""


class OptionsError(ValueError):
    """A daemon option that cannot be used (exit 2, usage)."""


@dataclass(frozen=True)
class DaemonOptions:
    """How ``qasup up`` runs, beyond the plan: where the control API listens, whether service output is
    echoed, and how to re-plan on reload."""

    socket: Path | None = None                  # None: $QASUP_SOCKET, else <state_dir>/qasup.sock
    listen: tuple[str, int] | None = None       # also serve the API on TCP (bearer token required)
    token: str | None = None                    # the TCP listener's token
    echo: bool = True                           # copy service output to stdout (if the stack allows)
    planner: Callable[[], Plan] | None = None   # builds a new plan for reload; raises ReloadRejected

    @classmethod
    def from_values(cls, *, socket: str | os.PathLike[str] | None = None, listen: str | None = None,
                    no_echo: bool = False, planner: Callable[[], Plan] | None = None,
                    environ: Mapping[str, str] | None = None) -> DaemonOptions:
        """Options from command-line values; ``OptionsError`` says what is wrong."""
        env = os.environ if environ is None else environ
        sock = Path(socket) if socket else (Path(env[SOCKET_ENV]) if env.get(SOCKET_ENV) else None)
        address = None
        token = env.get(TOKEN_ENV) or None
        if listen:
            try:
                address = parse_hostport(listen)
            except ValueError:
                raise OptionsError(f"--listen {listen!r} is not HOST:PORT") from None
            if token is None or len(token) < MIN_TOKEN_LENGTH:
                raise OptionsError(f"--listen needs {TOKEN_ENV} set to a secret of at least {MIN_TOKEN_LENGTH} "
                                   "characters (clients send it as 'Authorization: Bearer TOKEN')")
        return cls(socket=sock, listen=address, token=token, echo=not no_echo, planner=planner)


def socket_path(plan: Plan, options: DaemonOptions) -> Path:
    """The control socket: the options' (``--socket`` or $QASUP_SOCKET), else ``<state_dir>/qasup.sock``."""
    if options.socket is not None:
        return options.socket
    stack = plan.config.stack
    return stack.path(stack.state_dir) / DEFAULT_SOCKET_NAME


def run_daemon(plan: Plan, options: DaemonOptions) -> int:
    """Run the stack in the foreground until it has shut down; returns the exit code of ``qasup up``."""
    return anyio.run(_main, plan, options, backend="asyncio")


async def _main(plan: Plan, options: DaemonOptions) -> int:
    echo = Echo(fd=sys.stdout.fileno())
    services_echo = plan.config.stack.echo and options.echo

    def say(text: str) -> None:
        lines = text.count("\n") + 1
        echo.offer("qasup", f"[qasup] {text}\n".encode("utf-8", "replace"), lines)

    code: int = Exit.OK
    daemon_id = os.urandom(8).hex()
    try:
        async with Reaper.open() as reaper, guardian(reaper, daemon_id, say):
            engine = Engine(plan, reaper, echo=echo if services_echo else None, say=say, planner=options.planner,
                            daemon_id=daemon_id)
            async with anyio.create_task_group() as tg:
                with anyio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
                    tg.start_soon(_signals, signals, engine, say)
                    _quiet_wakeup_fd()
                    try:
                        await tg.start(_serve_api, engine, socket_path(plan, options), options, say)
                    except (DaemonAlreadyRunning, ListenError, OSError) as e:
                        # another daemon on this stack: usage (2); a socket that cannot be made: 1
                        print(f"qasup: control socket: {e}", file=sys.stderr, flush=True)
                        tg.cancel_scope.cancel()
                        return Exit.CONFIG if isinstance(e, DaemonAlreadyRunning) else Exit.FAILED
                    code = await engine.run()
                    tg.cancel_scope.cancel()
    finally:
        echo.close()
    return code


def _quiet_wakeup_fd() -> None:
    """Signals coalesce (the reaper drains every exit per wake-up), so a full wake-up pipe during a storm of
    SIGCHLDs loses nothing; keep Python from printing "Exception ignored ... BlockingIOError" for it."""
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)


async def _serve_api(engine: Engine, path: Path, options: DaemonOptions, say: Say, *,
                     task_status: anyio.abc.TaskStatus[ServeInfo] = anyio.TASK_STATUS_IGNORED) -> None:
    await serve(engine, path, listen=options.listen, token=options.token,
                log=lambda m: say(m if m.startswith("api") else f"api: {m}"), task_status=task_status)


async def _signals(signals: AsyncIterator[int], engine: Engine, say: Say) -> None:
    """SIGINT and SIGTERM shut the stack down (a second SIGINT kills it at once), SIGHUP reloads; the
    others of :data:`HANDLED_SIGNALS` are said and ignored."""
    interrupts = 0
    async with anyio.create_task_group() as tg:
        async for sig in signals:
            if sig == signal.SIGINT:
                interrupts += 1
                if interrupts > 1:
                    say("second interrupt: killing every service now")
                    engine.kill_now()
                else:
                    engine.begin_shutdown("interrupted (SIGINT); press Ctrl-C again to kill at once")
            elif sig == signal.SIGTERM:
                engine.begin_shutdown("SIGTERM")
            elif sig == signal.SIGHUP:
                tg.start_soon(_reload, engine, say)
            else:
                say(f"{signal.Signals(sig).name} received and ignored")


async def _reload(engine: Engine, say: Say) -> None:
    try:
        await engine.reload()
    except EngineError as e:
        say(f"reload (SIGHUP): {e}")
