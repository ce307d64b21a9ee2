"""The seven measurements. Each runs qasup and supervisord on the same stand-ins, alternating which goes
first, and adds raw samples to a :class:`Result`; a failure is recorded, never raised past its scenario.

Times are wall-clock seconds from ``time.time()``: launch times are taken just before ``Popen``, readiness
times from qasup's ``events.jsonl`` (``ts``) or from the arrival of a line on the daemon's stdout.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchkit.daemons import Daemon, Prog, Qasup, Supervisord
from benchkit.procs import WaitTimeout, cpu_ticks, guardian_pid, rss_kib, supervisord_line_time, timed_run

QASUP, SV = "qasup", "supervisord"
PASS = "python -c pass"


class Result:
    """Raw samples of one scenario: ``samples[metric][who] -> [values]``, plus failures and notes."""

    def __init__(self, sid: int, title: str) -> None:
        self.sid, self.title = sid, title
        self.samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.seconds = 0.0
        self.extra: dict = {}   # scenario 1: the start-up breakdown (benchkit.startup)

    def add(self, metric: str, who: str, value: float) -> None:
        self.samples[metric][who].append(value)

    def fail(self, who: str, what: str, daemon: Daemon | None = None) -> None:
        msg = f"{who}: {what}"
        if daemon is not None and daemon.watch is not None:
            tail = daemon.output_tail(6).strip()
            if tail:
                msg += "\n    last output: " + "\n    ".join(tail.splitlines())
        self.failures.append(msg)

    def to_json(self) -> dict:
        return {"id": self.sid, "title": self.title, "samples": {m: dict(w) for m, w in self.samples.items()},
                "failures": self.failures, "notes": self.notes, "seconds": round(self.seconds, 1),
                **({"extra": self.extra} if self.extra else {})}


@dataclass
class Ctx:
    """What every scenario needs: interpreters, folders, the run marker, and the daemons still alive."""

    python: str
    venv: Path
    tmp: Path
    marker: str
    standin: Path
    rounds: int
    quick: bool
    log: Callable[[str], None]
    live: list[Daemon] = field(default_factory=list)
    seq: int = 0
    _burst: tuple[Path, int, str] | None = None

    def folder(self, label: str) -> Path:
        self.seq += 1
        return self.tmp / f"{self.seq:03d}-{label}"

    def qasup(self, folder: Path, progs: list[Prog], **kw) -> Qasup:
        d = Qasup(folder / "q", self.marker, self.python, progs, **kw)
        self.live.append(d)
        return d

    def supervisord(self, folder: Path, progs: list[Prog]) -> Supervisord:
        d = Supervisord(folder / "s", self.marker, self.venv, progs)
        self.live.append(d)
        return d

    def stop(self, d: Daemon, timeout: float = 20.0) -> float | None:
        try:
            return d.stop(timeout)
        finally:
            if d in self.live:
                self.live.remove(d)

    def standin_argv(self, *args: str) -> list[str]:
        return [self.python, "-I", "-S", str(self.standin), *args]

    def burst_file(self) -> tuple[Path, int, str]:
        """The 94 MB input (1 M numbered lines of 94 bytes), made once per harness run: path, size, sha1."""
        if self._burst is None:
            path = self.tmp / "burst.txt"
            head = b"2026-01-01 12:00:00,000 INFO worker.py:123 request handled in 12.3 ms status=200 id="
            width = 94 - len(head) - 1
            h = hashlib.sha1()
            with open(path, "wb") as f:
                for block in range(100):
                    chunk = b"".join(head + b"%0*d\n" % (width, i) for i in range(block * 10_000, (block + 1) * 10_000))
                    f.write(chunk)
                    h.update(chunk)
            self._burst = (path, path.stat().st_size, h.hexdigest())
        return self._burst


def orders(round_no: int) -> tuple[str, str]:
    """Alternate which daemon goes first, round by round."""
    return (QASUP, SV) if round_no % 2 == 0 else (SV, QASUP)


def guarded(res: Result, who: str, ctx: Ctx, fn: Callable[[], None], daemons: list[Daemon]) -> None:
    """Run one measurement; record a failure instead of raising; always stop its daemons."""
    try:
        fn()
    except (WaitTimeout, RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
        res.fail(who, f"{type(e).__name__}: {e}", daemons[0] if daemons else None)
    except Exception as e:  # a harness bug must not lose the other scenarios' numbers
        res.fail(who, f"harness error {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
    finally:
        for d in daemons:
            ctx.stop(d)
            if getattr(d, "leftovers", 0):
                res.notes.append(f"{who}: {d.leftovers} process(es) were left after the daemon stopped "
                                 f"and had to be killed")


# ---------------------------------------------------------------------------------------------- 1

DAG: dict[str, tuple[float, tuple[str, ...]]] = {
    "db": (0.3, ()), "cache": (0.1, ()), "queue": (0.2, ()), "model": (0.5, ()),
    "api": (0.2, ("db", "cache", "model")), "worker": (0.3, ("queue", "db")), "web": (0.1, ("api", "worker")),
}


def critical_path(dag: dict[str, tuple[float, tuple[str, ...]]]) -> tuple[float, list[str]]:
    """Longest chain of readiness delays through the dependency graph, and its services."""
    finish: dict[str, tuple[float, list[str]]] = {}

    def visit(n: str) -> tuple[float, list[str]]:
        if n not in finish:
            delay, deps = dag[n]
            best = max((visit(d) for d in deps), default=(0.0, []), key=lambda x: x[0])
            finish[n] = (best[0] + delay, best[1] + [n])
        return finish[n]

    return max((visit(n) for n in dag), key=lambda x: x[0])


def dag_progs() -> list[Prog]:
    return [Prog(n, ["/bin/sh", "-c", f"sleep {d}; echo READY {n}; exec sleep 3600"], requires=deps,
                 ready_log="^READY ") for n, (d, deps) in DAG.items()]


def s1_bringup(ctx: Ctx, res: Result, round_no: int) -> None:
    cp, _ = critical_path(DAG)
    n = len(DAG)
    for who in orders(round_no):
        folder = ctx.folder(f"s1-{who}")
        if who == QASUP:
            q = ctx.qasup(folder, dag_progs())

            def run_q() -> None:
                t0 = q.start()
                t_line = q.wait_all_ready(n, 30)
                q.events.poll()
                ready = [e["ts"] for e in q.events.events if e.get("state") == "ready" and e.get("prev") != "ready"]
                first = q.events.events[0]["ts"] if q.events.events else None
                if len(ready) < n:
                    raise RuntimeError(f"events.jsonl shows {len(ready)} ready events, expected {n}")
                res.add("ready_line_s", QASUP, t_line - t0)
                res.add("ready_event_s", QASUP, max(ready) - t0)
                res.add("overhead_s", QASUP, max(ready) - t0 - cp)
                if first is not None:
                    res.add("startup_s", QASUP, first - t0)
                    res.add("sched_overhead_s", QASUP, max(ready) - first - cp)
                spawned = [e["ts"] for e in q.events.events if e.get("service") and "pid" in e]
                if spawned:   # the first event with a pid: the first service's process exists
                    res.add("spawn_ms", QASUP, (min(spawned) - t0) * 1000)

            guarded(res, QASUP, ctx, run_q, [q])
        else:
            s = ctx.supervisord(folder, dag_progs())

            def run_s() -> None:
                t0 = s.start()
                t_all = s.wait_all_running(n, 30)
                res.add("running_s", SV, t_all - t0)
                assert s.watch is not None
                t_first, _ = s.watch.wait_for(lambda line: "spawned:" in line, 1)
                res.add("first_spawn_s", SV, t_first - t0)

            guarded(res, SV, ctx, run_s, [s])


# ---------------------------------------------------------------------------------------------- 2

def s2_marker_latency(ctx: Ctx, res: Result, duration: float) -> None:
    progs = [Prog(f"flap{i}", ctx.standin_argv("flap", "0.05", "0.25", "0.15"), ready_log=r"^READY pid=")
             for i in range(5)]
    q = ctx.qasup(ctx.folder("s2-qasup"), progs)

    def run() -> None:
        q.start()
        q.wait_all_ready(len(progs), 30)
        time.sleep(duration)
        ctx.stop(q)
        q.events.poll()
        ready_ts = {e["pid"]: e["ts"] for e in q.events.events if e.get("state") == "ready" and "pid" in e}
        marks: dict[int, float] = {}
        for p in progs:
            for line in q.log_file(p.name).read_text(errors="replace").splitlines():
                if line.startswith("READY pid="):
                    parts = dict(kv.split("=", 1) for kv in line.split()[1:])
                    marks[int(parts["pid"])] = float(parts["ts"])
        pairs = [(ready_ts[pid] - ts) * 1000 for pid, ts in marks.items() if pid in ready_ts]
        missing = [pid for pid in marks if pid not in ready_ts]
        for v in pairs:
            res.add("latency_ms", QASUP, v)
        if len(missing) > 1:   # the last instance may be stopped between its marker and the event
            res.notes.append(f"{len(missing)} markers had no ready event (instances stopped right after?)")
        if not pairs:
            raise RuntimeError("no marker/ready pairs collected")

    guarded(res, QASUP, ctx, run, [q])
    # the floor, right after: a bare asyncio reader keeping the same stand-ins flapping (benchkit/markerfloor.py)
    floor = Path(__file__).with_name("markerfloor.py")
    try:
        out = subprocess.run([ctx.python, "-I", "-S", str(floor), str(len(progs)), str(duration),
                              *progs[0].argv], capture_output=True, text=True, timeout=duration + 30,
                             env={**os.environ, "BENCH_RUN": ctx.marker}, check=True).stdout
        for v in out.split():
            res.add("floor_latency_ms", QASUP, float(v))
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        res.notes.append(f"the marker latency floor could not be measured: {e}")


# ---------------------------------------------------------------------------------------------- 3

def settle(d: Daemon, timeout: float) -> None:
    """Wait until the daemon is done starting, so that a burst measures capture, not start-up: qasup imports its
    control server once the first wave is spawned (the burst's stand-in opens its gate at once), so its socket
    answering is the mark; supervisord is done once the program is RUNNING."""
    if isinstance(d, Supervisord):
        d.wait_all_running(1, timeout)
        return
    deadline = time.monotonic() + timeout
    while True:
        code, _, _ = d.status()
        if code in (0, 3):   # the daemon answered (3: the burst service is not ready: it has no readiness check)
            return
        if time.monotonic() > deadline:
            raise WaitTimeout(f"qasup's control socket did not answer within {timeout:g}s")
        time.sleep(0.01)


def open_gate(fifo: Path, timeout: float, just_before: Callable[[], None] = lambda: None) -> float:
    """Wait until the stand-in has the FIFO open, call ``just_before``, then release the stand-in; returns the
    wall time of the release."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise WaitTimeout(f"the burst stand-in did not open its gate within {timeout:g}s") from None
            time.sleep(0.002)
    try:
        just_before()
        t0 = time.time()
        os.write(fd, b"g")
    finally:
        os.close(fd)
    return t0


def wait_size(path: Path, size: int, timeout: float) -> tuple[float | None, int]:
    """Poll until ``path`` holds ``size`` bytes; (wall time it did or None, the last size seen)."""
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        try:
            last = os.stat(path).st_size
        except FileNotFoundError:
            last = 0
        if last >= size:
            return time.time(), last
        time.sleep(0.001)
    return None, last


def sha1_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def s3_burst(ctx: Ctx, res: Result, round_no: int, reps: int = 2) -> None:
    src, size, digest = ctx.burst_file()
    if round_no == 0:   # the limit for any capturer: a pipe into a file (page cache warmed first)
        argv = ["/bin/sh", "-c", 'cat "$1" | cat > "$2"', "sh", str(src), str(ctx.tmp / "cat.out")]
        subprocess.run(argv, check=True)
        os.sync()
        t0 = time.perf_counter()
        subprocess.run(argv, check=True)
        res.add("seconds", "cat | cat", time.perf_counter() - t0)
        (ctx.tmp / "cat.out").unlink(missing_ok=True)
    for who in [w for rep in range(reps) for w in orders(round_no + rep)]:
        folder = ctx.folder(f"s3-{who}")
        folder.mkdir(parents=True)
        fifo = folder / "gate.fifo"
        os.mkfifo(fifo)
        progs = [Prog("burst", ctx.standin_argv("gate", str(fifo), str(src)), restart="never",
                      rules=10 if who == QASUP else 0, log_max="1GiB")]
        d: Daemon = ctx.qasup(folder, progs, echo=False) if who == QASUP else ctx.supervisord(folder, progs)

        def run(d: Daemon = d, who: str = who, fifo: Path = fifo) -> None:
            d.start()
            settle(d, 20)   # a daemon in its steady state: qasup finishes its start-up after the first spawn
            os.sync()   # no write-back of earlier files during the measurement
            ticks0: list[int] = []
            t0 = open_gate(fifo, 20, lambda: ticks0.append(cpu_ticks(d.pid)))
            log = d.log_file("burst")  # type: ignore[attr-defined]
            t1, seen = wait_size(log, size, 60)
            res.add("cpu_ms", who, (cpu_ticks(d.pid) - ticks0[0]) * 1000 / os.sysconf("SC_CLK_TCK"))
            if t1 is None:
                res.add("lost_bytes", who, size - seen)
                raise RuntimeError(f"log holds {seen} of {size} bytes after 60 s")
            res.add("seconds", who, t1 - t0)
            time.sleep(0.05)
            final = log.stat().st_size
            res.add("lost_bytes", who, size - final)
            if final != size or sha1_of(log) != digest:
                res.fail(who, f"log differs from the input: {final} bytes vs {size}, or a different hash")
            log.unlink()   # before write-back: 94 MB of dirty pages would slow the next round down

        guarded(res, who, ctx, run, [d])


# ---------------------------------------------------------------------------------------------- 4, 5, 7

class _Skip(Exception):
    """No idle window in this round."""


IDLE_NAMES = ["db", "cache", "queue", "model", "api", "worker", "web"]


def idle_progs() -> list[Prog]:
    return [Prog(n, ["/bin/sh", "-c", f"echo READY {n}; exec sleep 3600"], ready_log="^READY ")
            for n in IDLE_NAMES]


def s457_idle_status_restart(ctx: Ctx, r4: Result, r5: Result, r7: Result, round_no: int, idle_s: float,
                             status_calls: int, kills: int) -> None:
    """One stack of 7 idle services per daemon, both up at once: idle CPU and RSS over the same window,
    then alternating status calls, then SIGKILL-and-restart of services."""
    folder = ctx.folder("s457")
    q = ctx.qasup(folder, idle_progs())
    s = ctx.supervisord(folder, idle_progs())
    n = len(IDLE_NAMES)
    up = {QASUP: False, SV: False}
    try:
        for who in orders(round_no):
            try:
                if who == QASUP:
                    q.start()
                    q.wait_all_ready(n, 30)
                else:
                    s.start()
                    s.wait_all_running(n, 30)
                up[who] = True
            except (WaitTimeout, OSError) as e:
                for r in (r4, r5, r7):
                    r.fail(who, f"the idle stack did not come up: {e}", q if who == QASUP else s)
        daemons = {QASUP: q, SV: s}
        # 4: idle CPU and memory, both daemons in the same window
        time.sleep(1.0)
        try:
            if idle_s <= 0:
                raise _Skip
            before = {w: cpu_ticks(d.pid) for w, d in daemons.items() if up[w]}
            time.sleep(idle_s)
            for w, d in daemons.items():
                if up[w]:
                    r4.add("idle_ticks", w, cpu_ticks(d.pid) - before[w])
                    r4.add("rss_mib", w, rss_kib(d.pid) / 1024)
                    if w == QASUP and (g := guardian_pid(d.pid)) is not None:
                        r4.add("guardian_rss_mib", w, rss_kib(g) / 1024)
        except _Skip:
            pass
        except OSError as e:
            r4.fail("both", f"cannot read /proc: {e}")
        # 5: status wall time, alternating calls
        for i in range(status_calls):
            for w in orders(i):
                if not up[w]:
                    continue
                code, wall, out = daemons[w].status()  # type: ignore[attr-defined]
                if code != 0:
                    r5.fail(w, f"status exited {code}: {out.strip()[-300:]}")
                    up[w] = False
                    continue
                r5.add("status_ms", w, wall * 1000)
            if up[QASUP]:   # the floor: the same interpreter doing nothing, in the same loop
                code, wall, _ = timed_run([ctx.python, "-c", "pass"], q.environment(), cwd=q.root)
                if code == 0:
                    r5.add("status_ms", PASS, wall * 1000)
        # 7: SIGKILL a service, time until a new pid, and until ready (qasup) / RUNNING (supervisord)
        for i in range(kills):
            name = IDLE_NAMES[i % n]
            for w in orders(i):
                if not up[w]:
                    continue
                try:
                    if w == QASUP:
                        kill_qasup(q, name, r7)
                    else:
                        kill_supervisord(s, name, r7)
                except (WaitTimeout, RuntimeError, OSError, ValueError) as e:
                    r7.fail(w, f"restart of {name}: {type(e).__name__}: {e}", daemons[w])
                    up[w] = False
            time.sleep(0.1)
    finally:
        for d in (q, s):
            ctx.stop(d)


def kill_qasup(q: Qasup, name: str, res: Result) -> None:
    old = q.service_pid(name)
    q.events.poll()
    mark = len(q.events.events)
    t0 = time.time()
    os.kill(old, signal.SIGKILL)
    ev, _ = q.events.wait_for(lambda e: e.get("service") == name and e.get("pid") not in (None, old), 10,
                              start=mark, what=f"new pid for {name}")
    res.add("new_pid_ms", QASUP, (ev["ts"] - t0) * 1000)
    ev, _ = q.events.wait_for(lambda e: e.get("service") == name and e.get("state") == "ready"
                              and e.get("pid") not in (None, old), 10, start=mark, what=f"{name} ready again")
    res.add("back_ms", QASUP, (ev["ts"] - t0) * 1000)


def kill_supervisord(s: Supervisord, name: str, res: Result) -> None:
    old = s.service_pid(name)
    assert s.watch is not None
    mark = len(s.watch)
    t0 = time.time()
    os.kill(old, signal.SIGKILL)
    t_spawn, _ = s.watch.wait_for(lambda line: f"spawned: '{name}' with pid" in line, 10, start=mark,
                                  what=f"'spawned: {name}' line")
    t_run, i = s.watch.wait_for(s.running_line(name), 10, start=mark, what=f"{name} RUNNING again")
    res.add("new_pid_ms", SV, (t_spawn - t0) * 1000)
    res.add("back_ms", SV, (t_run - t0) * 1000)
    logged = supervisord_line_time(s.watch.lines[i - 1][1])
    if logged is not None:
        res.add("back_logged_ms", SV, (logged - t0) * 1000)


# ---------------------------------------------------------------------------------------------- 6

def s6_scale(ctx: Ctx, res: Result, sizes: tuple[int, ...], status_calls: int) -> None:
    for n in sizes:
        progs = [Prog(f"s{i:04d}", ["sleep", "3600"], restart="on-failure") for i in range(n)]
        timeout = 30 + n * 0.12
        for who in (QASUP, SV):
            folder = ctx.folder(f"s6-{n}-{who}")
            d: Daemon = ctx.qasup(folder, progs, stop_budget="120s") if who == QASUP else \
                ctx.supervisord(folder, progs)

            def run(d: Daemon = d, who: str = who, n: int = n) -> None:
                t0 = d.start()
                if isinstance(d, Qasup):
                    t = d.wait_all_ready(n, timeout)
                    res.add(f"up_{n}_s", who, t - t0)
                else:
                    assert isinstance(d, Supervisord)
                    t = d.wait_all_running(n, timeout)
                    res.add(f"up_{n}_s", who, t - t0)
                time.sleep(0.5)
                res.add(f"rss_{n}_mib", who, rss_kib(d.pid) / 1024)
                for _ in range(status_calls):
                    code, wall, out = d.status()  # type: ignore[attr-defined]
                    if code != 0:
                        raise RuntimeError(f"status exited {code}: {out.strip()[-300:]}")
                    res.add(f"status_{n}_ms", who, wall * 1000)
                cap = 35.0
                took = ctx.stop(d, timeout=cap)
                if took is None:
                    raise RuntimeError(f"the ordered shutdown of {n} services did not finish within {cap:g} s "
                                       f"(then killed)")
                res.add(f"stop_{n}_s", who, took)

            guarded(res, who, ctx, run, [d])
            ctx.log(f"  scale {n} {who}: " + ", ".join(
                f"{m}={v[who][-1]:.3f}" for m, v in res.samples.items() if m.endswith(f"_{n}_s") and v.get(who)))
    lo, hi = min(sizes), max(sizes)
    if hi > lo:   # the floor an anyio design pays per task: benchkit/taskfloor.py at both sizes, same interpreter
        floor = Path(__file__).with_name("taskfloor.py")
        for tasks in (0, 1, 2):
            try:
                kib = [int(subprocess.run([ctx.python, str(floor), str(n), str(tasks)], capture_output=True,
                                          text=True, check=True, timeout=60).stdout.split()[-1]) for n in (lo, hi)]
            except (subprocess.SubprocessError, ValueError, IndexError) as e:
                res.notes.append(f"the anyio task floor could not be measured: {e}")
                break
            res.add(f"floor_{tasks}_kib", QASUP, (kib[1] - kib[0]) / (hi - lo))
    for who in (QASUP, SV):   # the cost of one more idle service: the RSS slope between the smallest and largest
        a, b = res.samples[f"rss_{lo}_mib"].get(who), res.samples[f"rss_{hi}_mib"].get(who)
        if hi > lo and a and b:
            res.add("per_service_kib", who, (b[-1] - a[-1]) * 1024 / (hi - lo))
