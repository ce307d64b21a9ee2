"""``qasup up``: the composition root. Wires the reaper, the engine, the control API, signals and echo.

This is the only module that knows both the engine and the API: the engine never imports the API, the API
knows only the :class:`~supervisor.control.server.Controller` protocol, and the CLI reaches all this only through the
socket.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import anyio

from supervisor.logs import core as logs
from supervisor.proc import process
from supervisor.control.server import MIN_TOKEN_LENGTH, ControlError, DaemonAlreadyRunning, ListenError, serve
from supervisor.engine.core import DAEMON_VARIABLE, Engine, EngineError
from supervisor.plan.build import Plan
from supervisor.protocol import DEFAULT_SOCKET_NAME, SOCKET_ENV, TOKEN_ENV, parse_hostport

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGQUIT)


class EngineController:
    """The engine, seen by the API: engine errors become control errors (with their HTTP status)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def status(self, names=()) -> dict:
        return self.engine.status(names)

    def has_service(self, name: str) -> bool:
        return self.engine.has_service(name)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> dict:
        try:
            return await fn(*args)
        except EngineError as e:
            raise ControlError(str(e), e.status) from None

    async def start(self, name: str) -> dict:
        return await self._call(self.engine.start, name)

    async def stop(self, name: str) -> dict:
        return await self._call(self.engine.stop, name)

    async def restart(self, name: str, with_dependents: bool = False) -> dict:
        return await self._call(self.engine.restart, name, with_dependents)

    def log_path(self, name: str) -> Path:
        return self.engine.log_path(name)

    def subscribe_events(self):
        return self.engine.subscribe_events()

    async def reload(self) -> dict:
        return await self._call(self.engine.reload)

    async def shutdown(self) -> None:
        self.engine.shutdown("shutdown requested through the control socket")


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
    if options.socket is not None:
        return options.socket
    stack = plan.config.stack
    return stack.path(stack.state_dir) / DEFAULT_SOCKET_NAME


def run_daemon(plan: Plan, options: DaemonOptions) -> int:
    return anyio.run(_main, plan, options, backend="asyncio")


async def _main(plan: Plan, options: DaemonOptions) -> int:
    echo = logs.Echo(fd=sys.stdout.fileno())
    services_echo = plan.config.stack.echo and options.echo

    def say(text: str) -> None:
        lines = text.count("\n") + 1
        echo.offer("qasup", f"[qasup] {text}\n".encode("utf-8", "replace"), lines)

    code = 0
    daemon_id = os.urandom(8).hex()
    try:
        async with process.Reaper.open() as reaper, _guardian(reaper, daemon_id, say):
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
                        return 2 if isinstance(e, DaemonAlreadyRunning) else 1
                    code = await engine.run()
                    tg.cancel_scope.cancel()
    finally:
        echo.close()
    return code


# The guardian outlives a SIGKILLed qasup. It waits on a pipe whose only write end qasup holds; at EOF (qasup
# exited, however it died) it SIGKILLs every process whose environment carries this daemon's QASUP_DAEMON id:
# services, their setsid'd daemons and grandchildren. After a clean shutdown there is nothing left to kill.
# The waiting is done by /bin/sh (about 1 MiB resident, against 8 MiB for an idle Python); only at EOF does it
# exec Python (-I -S: no site, no imports beyond os/time) to walk /proc. Without /bin/sh, Python waits itself.
_GUARD_CODE = """
import os, sys, time
fd, needle = int(sys.argv[1]), ("%s=" + sys.argv[2]).encode()
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
            with open("/proc/%%s/environ" %% name, "rb") as f:
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
""" % DAEMON_VARIABLE
# stdin is the pipe; `read` returns non-zero at EOF; then "$0" is Python, "$1" the code, "$2" the daemon id
_GUARD_SH = 'while read -r _; do :; done; exec "$0" -I -S -c "$1" 0 "$2"'


def guardian_argv(daemon_id: str, shell: str | None = "/bin/sh") -> list[str]:
    """The guardian's command line; its stdin must be the read end of the pipe."""
    if shell is not None and os.access(shell, os.X_OK):
        return [shell, "-c", _GUARD_SH, sys.executable, _GUARD_CODE, daemon_id]
    return [sys.executable, "-I", "-S", "-c", _GUARD_CODE, "0", daemon_id]


@asynccontextmanager
async def _guardian(reaper: process.Reaper, daemon_id: str, say: Callable[[str], None]):
    """Run the guardian for the life of the block; on a clean exit, wait (briefly) until it is gone."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)   # never hold qasup's stdout open after it died
    env = {k: v for k, v in os.environ.items() if k != DAEMON_VARIABLE}
    try:
        child = reaper.spawn(guardian_argv(daemon_id), cwd="/", env=env, stdin=read_fd, stdout=null,
                             stderr=null, tag="qasup-guardian", pdeathsig=False)
    except process.SpawnError as e:
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


def _quiet_wakeup_fd() -> None:
    """Signals coalesce (the reaper drains every exit per wake-up), so a full wake-up pipe during a storm of
    SIGCHLDs loses nothing; keep Python from printing "Exception ignored ... BlockingIOError" for it."""
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)


async def _serve_api(engine: Engine, path: Path, options: DaemonOptions, say, *,
                     task_status=anyio.TASK_STATUS_IGNORED) -> None:
    await serve(EngineController(engine), path, listen=options.listen, token=options.token,
                log=lambda m: say(m if m.startswith("api") else f"api: {m}"), task_status=task_status)


async def _signals(signals, engine: Engine, say: Callable[[str], None]) -> None:
    interrupts = 0
    async with anyio.create_task_group() as tg:
        async for sig in signals:
            if sig == signal.SIGINT:
                interrupts += 1
                if interrupts > 1:
                    say("second interrupt: killing every service now")
                    engine.kill_now()
                else:
                    engine.shutdown("interrupted (SIGINT); press Ctrl-C again to kill at once")
            elif sig == signal.SIGTERM:
                engine.shutdown("SIGTERM")
            elif sig == signal.SIGHUP:
                tg.start_soon(_reload, engine, say)
            else:
                say(f"{signal.Signals(sig).name} received and ignored")


async def _reload(engine: Engine, say: Callable[[str], None]) -> None:
    try:
        await engine.reload()
    except EngineError as e:
        say(f"reload (SIGHUP): {e}")
