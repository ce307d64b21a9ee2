"""The life of one spawned run, from its spawn to its exit: output, readiness, the main process, liveness, leftovers.

:class:`Lifetime` captures the output into its sinks, probes readiness (and runs the ``[live]`` loop once ready),
and waits for the run's end:

* ``type = "simple"``: the spawned process is the main process. When it exits 0 and leaves processes behind
  (it daemonized) the run is a failed start, with a message that says how to keep it in the foreground;
  the leftovers are stopped.
* ``type = "forking"``: the launcher must exit 0; then the main process is the daemon
  (:func:`~supervisor.proc.pidfile.find_main`), ``Spawned`` is posted again with its pid, ``Ready`` only
  once it is known, and the run ends with the daemon's exit.

A run ends when its main process has exited, its output was read to the end and none of its processes remain:
leftovers get ``[stop] signal`` and the unit's full ``[stop] timeout`` before SIGKILL. A stop (:func:`stop_run`)
owns the tree from its first signal on: the run waits for it rather than signalling anything itself.

What a running service holds: the run's own task reads its output (no second task, no task group) and, for a
run with nothing to probe or watch, not even that once the output has been quiet for :data:`QUIET_AFTER`: the
run *parks* (a loop reader on its pipe and a future on its exit), and the first output or the exit starts a
task again in the stack's group, which reads and parks again, or ends the run as the first task would have.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from supervisor.engine import messages as m
from supervisor.engine.instance import Instance
from supervisor.engine.sdnotify import RunNotify
from supervisor.engine.states import ServiceState
from supervisor.logs.capture import QUIET, Capture
from supervisor.proc.flag import Flag
from supervisor.proc.pidfile import MainProcess, find_main
from supervisor.proc.reaper import Child
from supervisor.proc.stop import terminate, tree_stats
from supervisor.proc.tree import anything_left
from supervisor.readiness.live import Check, LiveLog, LiveLoop
from supervisor.readiness.probes import LogMarker, Probe, wait_ready, why_not_ready
from supervisor.records import dataclass

if TYPE_CHECKING:
    from supervisor.engine.service import Service
    from supervisor.plan.resolve import ResolvedUnit

DRAIN_AFTER_EXIT = 2.0   # seconds to wait for the pipe's EOF after the main process exited, before stopping leftovers
QUIET_AFTER = 0.25   # seconds of quiet output after which a run with nothing to probe or watch parks (no task)
SPAWNS_SETTLE_S = 0.05   # at most this long, an exit waits for spawns in flight before it looks for leftovers


@dataclass(eq=False, slots=True)
class Run:
    """The I/O side of one instance."""

    inst: Instance
    scope: anyio.CancelScope | None = None   # the prepare step's, while it runs (a stop cancels it)
    cancelled: bool = False              # a stop or kill came before the spawn: the run never starts its process
    child: Child | None = None           # the spawned process (a forking service's launcher)
    main: MainProcess | None = None      # a forking service's daemon, once known
    main_known: Flag | None = None       # forking only: set once the daemon is known
    marker: LogMarker | None = None
    probes: Sequence[Probe] = ()
    live_log: LiveLog | None = None
    live_checks: Sequence[Check] = ()
    notify: RunNotify | None = None      # [ready] notify: the run's NOTIFY_SOCKET and what came on it
    read_fd: int = -1
    stopping: bool = False               # a terminate owns the tree (a stop, or the stop of leftovers)
    stopped: Flag | None = None          # made by that terminate, set when it has returned
    parked: bool = False                 # no task waits for the run now (Lifetime._park)
    queued: Callable[[], None] | None = None   # how it starts once the spawn gate lets it (engine.gate)

    def main_pid(self) -> int | None:
        """The main process's pid while it runs."""
        if self.main is not None:
            return self.main.pid if self.main.alive() else None
        if self.child is None or self.child.returncode is not None:
            return None
        return self.child.pid


async def stop_run(run: Run, sig: int, timeout: float, mode: str) -> None:
    """Stop ``run``'s tree (``[stop] mode``); a run has one stop: a later call adds nothing to a running one."""
    if run.stopping or run.child is None:
        return
    run.stopping = True
    stopped = run.stopped = Flag()
    try:
        await terminate(run.child, sig, timeout, mode=mode, main=run.main)
    finally:
        stopped.set()


def daemonized_message(left: Sequence[int]) -> str:
    pids = ", ".join(map(str, sorted(left)[:8])) + (", ..." if len(left) > 8 else "")
    return (f"the program daemonized: its main process exited 0 and left {len(left)} "
            f"process{'es' if len(left) != 1 else ''} running (pid{'s' if len(left) != 1 else ''} {pids}), "
            "stopped now. Keep it in the foreground (nginx: 'daemon off;', redis-server: '--daemonize no', "
            "memcached: without -d), or set type = \"forking\" (and pid_file) in its unit")


class _Either:
    """``Capture.pump``'s ``until`` for two flags: set once either is."""

    __slots__ = ("a", "b")

    def __init__(self, a: Flag, b: Flag) -> None:
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()

    def add_waiter(self, fut: asyncio.Future[None]) -> None:
        self.a.add_waiter(fut)
        self.b.add_waiter(fut)

    def discard_waiter(self, fut: asyncio.Future[None]) -> None:
        self.a.discard_waiter(fut)
        self.b.discard_waiter(fut)


Ended = Callable[[int | None, str | None], None]
"""How a parked run reports its end: (exit code, failure), as :meth:`Lifetime.supervise` returns them."""


class Lifetime:
    """One spawned run (see the module's docstring); ``await Lifetime(...).supervise()`` -> (code, failure), or
    None when the run was parked (``tg`` and ``on_end`` given): it then ends by calling ``on_end`` later."""

    __slots__ = ("svc", "run", "unit", "sinks", "say", "eof", "flushes", "forking", "left_behind", "failed_start",
                 "tg", "on_end", "cap", "_exit_watch")

    def __init__(self, svc: Service, run: Run, unit: ResolvedUnit, *, sinks: Sequence[Callable[[bytes], None]],
                 flushes: Sequence[Callable[[], None]], say: Callable[[str], None],
                 tg: anyio.abc.TaskGroup | None = None, on_end: Ended | None = None) -> None:
        self.svc, self.run, self.unit = svc, run, unit
        self.sinks, self.say = sinks, say
        self.eof = Flag()
        self.flushes = [*flushes, self.eof.set]
        self.forking = unit.spec.type == "forking"
        self.left_behind: Sequence[int] = ()   # what was left running after a natural exit of the main process
        self.failed_start = False          # the run never had a main process of its own
        self.tg, self.on_end = tg, on_end
        self.cap = Capture(run.read_fd, sinks, on_eof=self.flushes, on_sink_error=self._sink_error)
        self._exit_watch: asyncio.Future[None] | None = None
        if self.forking:
            run.main_known = Flag()

    async def supervise(self) -> tuple[int | None, str | None] | None:
        run, cap = self.run, self.cap
        child = run.child
        assert child is not None
        # The output is read by the run's own task while the main process runs (Capture.pump until its exit),
        # so a running service holds one task, not two, and no task group of its own; a run with nothing to
        # probe or watch parks once its output has been quiet for QUIET_AFTER (see _park): no task at all.
        # Then a task reads the rest beside the end of the run (leftovers may hold the pipe). Reading stays in a
        # task: a loop reader callback that read the pipe itself measured 20-25 % slower on the 94 MB burst.
        if not (run.probes or run.main_known is not None or run.notify is not None or self.unit.live is not None):
            self.svc.post(m.Ready(run.inst))   # nothing to wait for, nothing to watch: ready at the spawn
            return await self._simple()
        # probes only (no [live], notify or forking): once they are done, the run goes on as one with nothing to
        # probe (and may park); the readiness task has returned then, so the task group is left empty
        probed = None if self.forking or run.notify is not None or self.unit.live is not None else Flag()
        async with anyio.create_task_group() as tg:
            if self.forking:   # the launcher's exit is only the start: the output is read beside it all along
                tg.start_soon(cap.pump)
            tg.start_soon(self._readiness, probed)
            if run.notify is not None:
                tg.start_soon(run.notify.serve, child, run.main_pid)
            if not self.forking:
                await cap.pump(until=child.exited if probed is None else _Either(child.exited, probed))
                if probed is not None and probed.is_set() and not (cap.closed or child.exited.is_set()):
                    code = failure = None   # the probes are done (their task has returned): go on below
                else:
                    probed = None
                    if not cap.closed:
                        tg.start_soon(cap.pump)
            if probed is None:
                code, failure = await self._until_end(child)
                tg.cancel_scope.cancel()
        if probed is not None:
            return await self._simple()
        return self._finish(code, failure)

    async def _simple(self) -> tuple[int | None, str | None] | None:
        """A run with nothing to probe or watch: its output until the main process exits, then its end; None
        when it was parked instead (its output quiet for QUIET_AFTER)."""
        cap, child = self.cap, self.run.child
        assert child is not None
        can_park = self.tg is not None and self.on_end is not None
        if await cap.pump(until=child.exited, quiet_after=QUIET_AFTER if can_park else None) == QUIET:
            self._park()
            return None
        if cap.closed:
            code, failure = await self._until_end(child)
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cap.pump)
                code, failure = await self._until_end(child)
                tg.cancel_scope.cancel()
        return self._finish(code, failure)

    def _park(self) -> None:
        """Wait with no task (a task, its frames and cancel scopes are ~4 KiB, and a stack holds hundreds of idle
        services): the event loop calls :meth:`_wake` when there is output again or the main process exited."""
        child = self.run.child
        assert child is not None
        self.run.parked = True
        self.cap.watch(self._wake)
        fut = self._exit_watch = asyncio.get_running_loop().create_future()
        fut.add_done_callback(self._exited)
        child.exited.add_waiter(fut)

    def _exited(self, fut: asyncio.Future[None]) -> None:
        self._wake()

    def _wake(self) -> None:
        """The parked run goes on in a task of the stack's group (:meth:`_awake`)."""
        run = self.run
        if not run.parked:
            return
        run.parked = False
        self.cap.unwatch()
        fut, self._exit_watch = self._exit_watch, None
        if fut is not None and run.child is not None:
            run.child.exited.discard_waiter(fut)
            fut.remove_done_callback(self._exited)
        assert self.tg is not None
        try:
            self.tg.start_soon(self._awake)
        except RuntimeError:   # the stack's task group is gone (the engine was cancelled): nothing can go on
            self.cap.close()
            assert self.on_end is not None
            self.on_end(None, "internal error: the stack's task group has ended")

    async def _awake(self) -> None:
        """A woken run: read its output, then park again or end (``on_end``), as the run's task would have."""
        code: int | None = None
        failure: str | None = None
        ended = True
        try:
            with anyio.CancelScope(shield=True):   # as the process part of a run's task (ProcessHost)
                result = await self._simple()
                if result is None:
                    ended = False
                else:
                    code, failure = result
        except Exception as e:
            failure = f"internal error: {type(e).__name__}: {e}"
        finally:
            if ended:
                assert self.on_end is not None
                self.on_end(code, failure)

    def _finish(self, code: int | None, failure: str | None) -> tuple[int | None, str | None]:
        """The end of the run, once its main process exited, its output was read and no process is left."""
        run = self.run
        child = run.child
        assert child is not None
        if child.forced:
            self.svc.stack.note_forced(self.svc.name)   # a shutdown that had to SIGKILL exits 5
        cgroup = getattr(child, "cgroup", None)
        if cgroup is not None and not cgroup.populated():
            cgroup.remove()   # the run is over: its cgroup goes with it
        if self.failed_start:
            run.inst.pid = None   # there was no main process to speak of: the start failed
        return code, failure

    async def _until_end(self, child: Child) -> tuple[int | None, str | None]:
        """The main process's exit, then the output to its end and no process left."""
        code, failure = await self._main_exit(child)
        await self._leftovers(child, drain=failure is None)
        if failure is None and code == 0 and not self.forking and self.left_behind:
            failure = daemonized_message(self.left_behind)
            self.failed_start = True
        return code, failure

    async def _main_exit(self, child: Child) -> tuple[int | None, str | None]:
        """Wait for the main process's exit: (its exit code, why the run failed)."""
        code: int | None = await child.wait()
        run = self.run
        if not self.forking or run.stopping:
            return code, None
        if code != 0:
            self.failed_start = True
            return code, (f"the launcher exited with code {code} (type = \"forking\" expects it to exit 0 once "
                          f"its daemon runs)")
        unit = self.unit
        pid_file = unit.pid_file
        deadline = (run.inst.spawned_at or time.monotonic()) + unit.ready.timeout
        notified = run.notify
        found = await find_main(child, pid_file, deadline, give_up=lambda: run.stopping,
                                announced=lambda: notified.main_pid if notified is not None else None)
        if isinstance(found, str):
            if run.stopping:
                return None, None
            self.failed_start = True
            return None, found
        run.main = found
        run.inst.pid = found.pid
        assert run.main_known is not None
        run.main_known.set()
        self.svc.post(m.Spawned(run.inst))
        code = await found.wait()
        if code is None:
            return None, (f"the daemon (pid {found.pid}) exited; its exit code is unknown (qasup was not its "
                          f"parent: run qasup as PID 1 or where it can be a child subreaper)")
        return code, None

    async def _leftovers(self, child: Child, drain: bool) -> None:
        """The main process has exited: read the output to its end and stop whatever is left (the full
        ``[stop] timeout``), unless a stop owns the tree already (then wait for it). ``drain``: give the
        leftovers a moment to end by themselves first (not after a failed start: they must go anyway)."""
        run = self.run
        if drain and not run.stopping:
            with anyio.move_on_after(DRAIN_AFTER_EXIT):
                await self.eof.wait()
        if child.reaper is not None and not run.stopping and self.eof.is_set():
            # another service's spawn in flight is an unknown child of qasup until it is registered: not a
            # leftover of this one (else anything_left scans all of /proc, milliseconds in the event loop)
            await child.reaper.spawns_settled(SPAWNS_SETTLE_S)
        if not run.stopping and (not self.eof.is_set() or anything_left(child)):
            # leftovers still hold the pipe or run on: a service is stopped only when none remain
            self.left_behind = sorted(tree_stats(child))
            stop = self.unit.spec.stop
            await stop_run(run, stop.signal, stop.timeout, "group")
        if run.stopping:
            assert run.stopped is not None
            await run.stopped.wait()
        with anyio.move_on_after(DRAIN_AFTER_EXIT):
            await self.eof.wait()

    def _sink_error(self, sink: Callable[[bytes], None], exc: Exception) -> None:
        self.say(f"{self.svc.name}: log output handler failed: {type(exc).__name__}: {exc}")

    async def _readiness(self, done: Flag | None = None) -> None:
        await self._probe()
        if done is not None:   # ready, or not in time (said): nothing left to probe or watch
            done.set()

    async def _probe(self) -> None:
        run, unit, post = self.run, self.unit, self.svc.post
        with anyio.move_on_after(unit.ready.timeout) as scope:
            await wait_ready(run.probes, unit.ready.mode)
            if run.main_known is not None:
                await run.main_known.wait()   # forking: ready only once the daemon is known
        reported = run.marker is not None and run.marker.settle()   # a lone marker reports at its match (host.py)
        if not reported and not scope.cancelled_caught:
            post(m.Ready(run.inst))
        elif not reported:   # not in time (a forking run's unknown daemon: its search says why, at the same deadline)
            if run.main_known is None or run.main_known.is_set():
                post(m.ReadyTimeout(run.inst, why_not_ready(run.probes)))
            return
        live = unit.live
        if live is None:
            return
        async with anyio.create_task_group() as tg:   # for as long as the run lasts
            if run.live_checks:
                tg.start_soon(self._live, unit)
            if live.watchdog and run.notify is not None:
                tg.start_soon(self._watchdog, run.notify, live.watchdog)

    def _active(self) -> bool:
        svc, inst = self.svc, self.run.inst
        return svc.inst is inst and svc.state == ServiceState.READY and not inst.terminating

    async def _watchdog(self, notify: RunNotify, every: float) -> None:
        """``[live] watchdog``: a liveness failure when no ``WATCHDOG=1`` came for ``every`` seconds (counted
        from the last one, or from ready); ``LiveRecovered`` when one comes after that (action warn)."""
        svc, inst = self.svc, self.run.inst
        since = time.monotonic()
        failed = False
        while True:
            last = max(notify.watchdog_at or 0.0, since)
            if failed and last > since:
                failed = False
                svc.post(m.LiveRecovered(inst))
            left = last + every - time.monotonic()
            if left > 0:
                await anyio.sleep(min(left, every))
                continue
            if self._active() and not failed:
                failed = True
                svc.post(m.LiveFailed(inst, 1, f"no WATCHDOG=1 for {every:g}s (sd_notify)"))
            since = time.monotonic()
            await anyio.sleep(min(every, 1.0))

    async def _live(self, unit: ResolvedUnit) -> None:
        """``[live]``: rounds while the instance is ready (the loop is cancelled with the run)."""
        live = unit.live
        assert live is not None
        svc, inst = self.svc, self.run.inst
        loop = LiveLoop(live, self.run.live_checks, active=self._active,
                        on_failed=lambda n, why: svc.post(m.LiveFailed(inst, n, why)),
                        on_recovered=lambda: svc.post(m.LiveRecovered(inst)))
        await loop.run()
