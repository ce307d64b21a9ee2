"""``qasup up``: the composition root. Wires the reaper, the guardian, the engine, the control API, signals
and echo, from a plan and a :class:`DaemonOptions`.

This is the only module that knows both the engine and the API: the engine never imports the API, the API
knows only the :class:`~supervisor.control.controller.Controller` protocol, and the CLI reaches all this only
through the socket.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from supervisor.control.listen import SOCKET_CHECK_EVERY, BoundSockets, DaemonAlreadyRunning, ListenError, bind_api
from supervisor.control.lock import StackLock
from supervisor.engine.engine import Engine
from supervisor.engine.errors import EngineError
from supervisor.errors import first_error
from supervisor.logs.echo import Echo
from supervisor.plan.result import Plan
from supervisor.proc.guardian import guardian
from supervisor.proc.kernel import raise_fd_limit, release_signals
from supervisor.proc.notify import Notifier
from supervisor.proc.sweep import tracking
from supervisor.protocol import DEFAULT_SOCKET_NAME, MIN_TOKEN_LENGTH, SOCKET_ENV, TOKEN_ENV, Exit, parse_hostport
from supervisor.records import dataclass

if TYPE_CHECKING:
    from supervisor.control.server import ServeInfo
    from supervisor.logs.inotify import Inotify

__all__ = ["HANDLED_SIGNALS", "DaemonOptions", "OptionsError", "run_daemon", "socket_path"]

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGQUIT)

FDS_WANTED = 1024
FDS_PER_SERVICE = 16
"""Below ``FDS_WANTED + FDS_PER_SERVICE * services`` open files, ``qasup up`` says that the limit is low."""

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
    http: tuple[str, int] | None = None         # the read-only listener (page, /metrics); else [stack] http
    echo: bool = True                           # copy service output to stdout (if the stack allows)
    planner: Callable[[], Plan] | None = None   # builds a new plan for reload; raises ReloadRejected

    @classmethod
    def from_values(cls, *, socket: str | os.PathLike[str] | None = None, listen: str | None = None,
                    no_echo: bool = False, planner: Callable[[], Plan] | None = None,
                    environ: Mapping[str, str] | None = None, http: str | None = None) -> DaemonOptions:
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
        try:   # port 0: any free one (the daemon says which)
            http_address = None if not http else (
                (parse_hostport(http[:-1] + "1")[0], 0) if http.endswith(":0") else parse_hostport(http))
        except ValueError:
            raise OptionsError(f"--http {http!r} is not HOST:PORT") from None
        return cls(socket=sock, listen=address, token=token, echo=not no_echo, planner=planner, http=http_address)


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
    echo.offer("qasup", b"", 0)   # start its writer (and eventfd) now, not when descriptors may have run out
    services_echo = plan.config.stack.echo and options.echo

    def say(text: str) -> None:
        data = f"[qasup] {text}\n".encode("utf-8", "replace")
        try:
            echo.offer("qasup", data, text.count("\n") + 1)
        except OSError:   # saying something must never take a service's runner down
            try:
                os.write(sys.stdout.fileno(), data)
            except OSError:
                pass

    stack = plan.config.stack
    try:
        lock = StackLock.acquire(stack.root)
    except DaemonAlreadyRunning as e:
        print(f"qasup: {e}", file=sys.stderr, flush=True)
        echo.close()
        return Exit.CONFIG
    code: int = Exit.OK
    entry_mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        with anyio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
            release_signals()   # held since exec (supervisor/__main__.py): what arrived meanwhile is acted on now
            try:
                _quiet_wakeup_fd()
                _check_fd_limit(len(plan.enabled), say)
                code = await _run_stack(plan, options, signals, lock, echo if services_echo else None, say)
            finally:
                # the handlers go with this block: held again (as they came), a late signal stays pending
                signal.pthread_sigmask(signal.SIG_SETMASK, entry_mask)
    finally:
        lock.close()
        echo.close()
    return code


async def _run_stack(plan: Plan, options: DaemonOptions, signals: AsyncIterator[int], lock: StackLock,
                     echo: Echo | None, say: Say) -> int:
    daemon_id = os.urandom(8).hex()
    notifier = Notifier.from_environ()   # sd_notify to qasup's own manager; no service inherits its variables
    async with tracking(daemon_id, say) as (reaper, _swept), guardian(reaper, daemon_id, say):
        _quiet_wakeup_fd()   # again: asyncio's add_signal_handler (the reaper's SIGCHLD) set it back to warn
        engine = Engine(plan, reaper, echo=echo, say=say, planner=options.planner, daemon_id=daemon_id)
        state = _StateWatch(engine, say)
        try:
            # bound (and a clash found) before any service starts; served once the first ones are spawned
            bound = bind_api(socket_path(plan, options), listen=options.listen, token=options.token,
                             http=options.http or engine.stack.http)
        except (DaemonAlreadyRunning, ListenError, OSError) as e:
            # another daemon on this socket: usage (2); a socket that cannot be made: 1
            print(f"qasup: control socket: {e}", file=sys.stderr, flush=True)
            return Exit.CONFIG if isinstance(e, DaemonAlreadyRunning) else Exit.FAILED
        try:
            async with anyio.create_task_group() as tg:
                if notifier is not None:
                    engine.notify = notifier.send
                    if notifier.watchdog:
                        tg.start_soon(_watchdog, notifier)
                tg.start_soon(_signals, signals, engine, say, state)
                tg.start_soon(_answer_lock_probes, lock)
                tg.start_soon(_serve_api, engine, bound, options, say, echo, state)
                code = await engine.run()
                tg.cancel_scope.cancel()
        finally:
            bound.close()   # what the server did not take over (it had not started yet)
    return code


async def _watchdog(notifier: Notifier) -> None:
    """``WATCHDOG=1`` every half ``WATCHDOG_USEC``, for as long as the daemon runs."""
    assert notifier.watchdog
    while True:
        notifier.send("WATCHDOG=1")
        await anyio.sleep(notifier.watchdog)


def _check_fd_limit(services: int, say: Say) -> None:
    """Raise the open-file limit to the hard limit (supervisord's ``minfds``), and say so when it stays low."""
    soft, hard = raise_fd_limit()
    want = FDS_WANTED + FDS_PER_SERVICE * services
    if 0 <= soft < want:
        say(f"the open-file limit is {soft} (hard limit {hard}), low for {services} services: qasup wants "
            f"{want} ({FDS_WANTED} + {FDS_PER_SERVICE} per service); starts that would run out of file "
            f"descriptors fail (EMFILE). Raise it: ulimit -n {want}, or docker run --ulimit nofile={want}")


async def _answer_lock_probes(lock: StackLock) -> None:
    """Accept (and close at once) what a second ``up`` of this stack connects to the lock to learn our pid."""
    if lock.sock is None:
        return
    while True:
        await anyio.wait_readable(lock.sock)
        if not lock.drain():
            await anyio.sleep(1.0)   # readable but nothing accepted (out of descriptors): do not spin


class _StateWatch:
    """Makes the state folder again when it goes missing (``rm -rf .qasup``), with events.jsonl, and has the
    server do the same for the socket: at each inotify event (a deletion or move in those folders) and at once
    on :meth:`poke` (SIGHUP), so an idle daemon never wakes up for it."""

    def __init__(self, engine: Engine, say: Say) -> None:
        self.engine = engine
        self.say = say
        self.server: ServeInfo | None = None
        self._inode: int | None = None
        self._wake, self._problem = anyio.Event(), ""   # the problem said last (each is said once)

    def poke(self) -> None:
        if self.server is not None:
            self.server.recheck()
        self._wake.set()

    async def watch(self) -> None:
        """Check at each inotify event in the state folder or the socket's folder (deletions and moves), so an
        idle daemon never wakes up; without inotify, every SOCKET_CHECK_EVERY seconds."""
        from supervisor.logs.inotify import Inotify  # here: it starts after the first spawns (ctypes)

        try:
            inotify = Inotify()
        except OSError:
            await self._poll()
            return
        if self.server is not None:
            self.server.check_every(math.inf)
        try:
            while True:
                self.check()
                self._watch_folders(inotify)
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        async def woken() -> None:
                            await self._wake.wait()
                            scope.cancel()
                        tg.start_soon(woken)
                        await anyio.wait_readable(inotify.fileno())
                        inotify.read_events()
                        scope.cancel()
                self._wake = anyio.Event()
                if self.server is not None:
                    self.server.recheck()
        finally:
            inotify.close()

    def _watch_folders(self, inotify: Inotify) -> None:
        from supervisor.logs.inotify import IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF, IN_MOVED_FROM, IN_ONLYDIR

        gone = IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
        folders = {self.engine.state_dir}
        if self.server is not None:
            folders.add(self.server.socket_path.parent)
        for folder in folders:
            for candidate in (folder, folder.parent):   # the parent: the folder itself may be gone
                try:
                    inotify.add_watch(candidate, gone)
                    break
                except OSError:
                    continue

    async def _poll(self) -> None:
        while True:
            self.check()
            with anyio.move_on_after(SOCKET_CHECK_EVERY):
                await self._wake.wait()
            self._wake = anyio.Event()
            if self.server is not None:
                self.server.recheck()

    def check(self) -> None:
        folder = self.engine.state_dir
        try:
            inode: int | None = os.stat(folder).st_ino
        except FileNotFoundError:
            inode = None
        except OSError:
            return
        if inode is not None and (self._inode == inode or (  # a first look: the folder holds our events file
                self._inode is None and self.engine.events.writes_to(folder / "events.jsonl"))):
            self._inode = inode
            return
        if inode is None and self._inode is None and not self.engine.events.opened:
            return   # not made yet (the engine makes it as it starts)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            made = os.stat(folder).st_ino
            self.engine.events.close()
            self.engine.events.open(folder / "events.jsonl")
            self._inode = made   # only now: a failed attempt is tried again at the next look
        except OSError as e:
            problem = f"the state folder {folder} is gone and cannot be made again: {e.strerror or e}; retrying"
            if problem != self._problem:
                self._problem = problem
                self.say(problem)
            return
        self._problem = ""
        self.say(f"the state folder {folder} had gone missing: made it again (events.jsonl starts afresh)")


def _quiet_wakeup_fd() -> None:
    """Signals coalesce (the reaper drains every exit per wake-up), so a full wake-up pipe during a storm of
    SIGCHLDs loses nothing; keep Python from printing "Exception ignored ... BlockingIOError" for it."""
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)


async def _serve_api(engine: Engine, bound: BoundSockets, options: DaemonOptions, say: Say, echo: Echo | None,
                     state: _StateWatch) -> None:
    """Serve the API on the sockets bound before the start, then watch the state folder and the socket. The
    server (h11, routes, /metrics) is imported once the first wave's spawns are reported, not on the way to
    them; a client that connects before waits in the socket's backlog."""
    await _first_spawns(engine, API_AFTER_SPAWNS)
    from supervisor.control.metrics import Observed, plan_facts
    from supervisor.control.server import serve

    observed = Observed(plan=lambda: plan_facts(engine.plan), events_total=lambda: engine.events.emitted,
                        echo_dropped=lambda: echo.dropped if echo is not None else {})
    taken: BoundSockets | None = bound
    failures = 0
    while True:
        try:
            async with anyio.create_task_group() as tg:
                state.server = await tg.start(partial(
                    serve, engine, bound.path, listen=options.listen, token=options.token,
                    http=options.http or engine.stack.http,
                    log=lambda m: say(m if m.startswith("api") else f"api: {m}"), observed=observed, bound=taken))
                tg.start_soon(state.watch)
            return
        except Exception as exc:  # noqa: BLE001  a fault in the API must not take PID 1 down: its services run on
            state.server = None
            if taken is not None:
                taken.close()   # what serve() had not taken over; the next try binds afresh
                taken = None
            failures += 1
            delay = min(API_RETRY_MAX_S, 0.5 * 2 ** (failures - 1))
            say(f"api: the control API stopped on an error ({first_error(exc)}); serving it again in {delay:g}s")
            await anyio.sleep(delay)


API_RETRY_MAX_S = 30.0   # the longest wait before the API is served again after a fault (from 0.5 s, doubling)


API_AFTER_SPAWNS = 0.25
"""The longest the API waits for the first wave's spawns before it is served anyway (seconds)."""


async def _first_spawns(engine: Engine, limit: float) -> None:
    """Return once every service that went `starting` has its pid or left `starting` (after at least one
    such event), or after ``limit`` seconds (first services that wait on something, or none to spawn)."""
    with anyio.move_on_after(limit):
        async with engine.events.subscribe() as events:
            spawning: set[str] = set()
            async for event in events:
                if name := event.get("service"):
                    if event.get("state") == "starting" and "pid" not in event:
                        spawning.add(name)
                        continue
                    spawning.discard(name)
                    if not spawning:
                        return


async def _signals(signals: AsyncIterator[int], engine: Engine, say: Say, state: _StateWatch) -> None:
    """SIGINT and SIGTERM shut the stack down (a second SIGINT kills it at once), SIGHUP makes the state folder
    and socket again if they are gone, and reloads; the others of :data:`HANDLED_SIGNALS` are said and ignored."""
    interrupts = 0
    async with anyio.create_task_group() as tg:
        async for sig in signals:
            if sig == signal.SIGINT:
                interrupts += 1
                if interrupts > 1:
                    say("second interrupt: killing every service now")
                    engine.kill_now(interrupted=True)
                else:
                    engine.begin_shutdown("interrupted (SIGINT); press Ctrl-C again to kill at once")
            elif sig == signal.SIGTERM:
                engine.begin_shutdown("SIGTERM")
            elif sig == signal.SIGHUP:
                state.poke()
                tg.start_soon(_reload, engine, say)
            else:
                say(f"{signal.Signals(sig).name} received and ignored")


async def _reload(engine: Engine, say: Say) -> None:
    try:
        await engine.reload()
    except EngineError as e:
        say(f"reload (SIGHUP): {e}")
