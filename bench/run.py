#!/usr/bin/env python3
"""Benchmarks: qasup against supervisord on the same stand-in programs, in alternating rounds.

    python bench/run.py                 # everything, 5 rounds (~7.5 min on 2 cores, scenario 8 included); writes docs/benchmarks.md
    python bench/run.py --quick         # 2 rounds, shorter windows, scale 100/300 (not written to docs/)
    python bench/run.py --only 3,5      # some scenarios only (not written to docs/ unless --out is given)
    python bench/run.py --only 8 --out /tmp/real.md   # real programs only: daemonizing nginx, Sanic

supervisord (PyPI ``supervisor`` 4.3.0) is installed into its own venv, ``bench/.venv-supervisord``: both
projects are the top-level package ``supervisor``, so they never share an interpreter. qasup is installed the
same way, as users get it: ``pip install`` of this checkout (not editable) into ``bench/.venv-qasup``, built
anew each run; it runs as that venv's ``qasup`` console script. With --python or $QASUP_PYTHON, that
interpreter runs it instead (``PYTHON -m supervisor``, this checkout on PYTHONPATH). Raw samples go to bench/out/results.json. Every daemon and service the
harness starts carries ``BENCH_RUN=<id>`` in its environment and is killed at the end, even on error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from benchkit import realworld, report, scenarios, startup  # noqa: E402
from benchkit.daemons import ensure_qasup, ensure_supervisord  # noqa: E402
from benchkit.procs import kill_marked  # noqa: E402
from benchkit.scenarios import Ctx, Result  # noqa: E402

TITLES = {
    1: "bring-up of a 7-service dependency graph",
    2: "log marker to ready latency",
    3: "94 MB output burst with 10 log rules",
    4: "idle CPU and memory, 7 idle services",
    5: "status command wall time",
    6: "scale: 100 / 300 / 1000 services",
    7: "restart latency after SIGKILL",
    realworld.SID: realworld.TITLE,
}


COMPILE_DEPENDENCIES = """
import compileall, importlib.metadata as md, re
seen, todo, files = set(), ["qasup"], set()
while todo:
    name = todo.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        continue
    seen.add(key)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    todo += [re.split(r"[ ;<>=!~\\[(]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
    if key != "qasup":
        files |= {str(f.locate()) for f in dist.files or [] if f.suffix == ".py"}
for f in sorted(files):
    compileall.compile_file(f, quiet=2)
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def find_python(explicit: str | None) -> str:
    candidates = [explicit, os.environ.get("QASUP_PYTHON"), sys.executable, str(REPO / ".venv" / "bin" / "python")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    tried = []
    for c in candidates:
        if not c or c in tried or not Path(c).exists():
            continue
        tried.append(c)
        r = subprocess.run([c, "-m", "supervisor", "--version"], env=env, capture_output=True, text=True,
                           cwd=tempfile.gettempdir())
        deps = subprocess.run([c, "-c", "import supervisor.daemon"], env=env, capture_output=True,
                              cwd=tempfile.gettempdir())   # the daemon's dependencies (anyio, ...) are there
        if r.returncode == 0 and "qasup" in r.stdout and deps.returncode == 0:
            return c
        if explicit:
            break
    sys.exit(f"bench: no interpreter runs qasup (tried {', '.join(tried) or 'none'}); pass --python or set "
             f"QASUP_PYTHON to the project's venv python")


def cgroup_move_cost() -> str:
    """One task move between two cgroups after 0.3 s of idle, median of 5: a whole RCU grace period on kernels
    whose cgroup2 root is not mounted with ``favordynmods`` (docs/processes.md), ~0.3 ms where it is. It is the
    cost a restart pays with cgroups, and the mount options do not always show the setting, so it is measured."""
    import statistics

    base = next((b for b in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
                 if os.path.exists(os.path.join(b, "cgroup.procs"))
                 and "cgroup2" in Path("/proc/mounts").read_text().split(b, 1)[-1].split("\n", 1)[0]), None)
    if base is None:
        return "n/a (no cgroup2 mount)"
    made = [os.path.join(base, f"qasup-bench-move-{os.getpid()}-{i}") for i in (0, 1)]
    child = None
    try:
        for d in made:
            os.mkdir(d)
        child = subprocess.Popen(["sleep", "30"])
        took = []
        for i in range(5):
            time.sleep(0.3)
            t0 = time.perf_counter()
            with open(os.path.join(made[i % 2], "cgroup.procs"), "w") as f:
                f.write(str(child.pid))
            took.append((time.perf_counter() - t0) * 1000)
        return f"{statistics.median(took):.2f} ms (one move after 0.3 s idle, median of 5)"
    except OSError as e:
        return f"n/a ({e.strerror or e})"
    finally:
        if child is not None:
            child.kill()
            child.wait()
        for d in made:
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def machine(python: str, sd_version: str) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    pyver = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                           text=True).stdout.strip()
    qv = subprocess.run([python, "-m", "supervisor", "--version"], capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()), "cpu": cpu, "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}", "python": pyver,
        "qasup": f"{qv} (git {rev}{' + uncommitted changes' if dirty else ''})", "supervisord": sd_version,
        "cgroup task move (the cost a restart pays with cgroups)": cgroup_move_cost(),
        "load average at start": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
    }


def cpu_times() -> list[int]:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def steal_share(before: list[int], after: list[int]) -> str:
    """CPU time the hypervisor gave to other guests during the run, as a share of all CPU time."""
    if len(before) < 8 or len(after) < 8:
        return "unknown"
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])
    return f"{100.0 * delta[7] / total:.1f} %" if total > 0 else "unknown"


def settle(max_wait: float = 10.0) -> None:
    """Flush dirty pages and wait (up to ``max_wait`` s) until the kernel has written them back."""
    os.sync()
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        try:
            with open("/proc/meminfo") as f:
                info = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("Dirty", "Writeback:"))}
        except (OSError, ValueError, IndexError):
            return
        if info.get("Dirty", 0) + info.get("Writeback", 0) < 4096:   # KiB
            break
        time.sleep(0.1)
    time.sleep(1.0)   # and one quiet second for the flusher threads to go idle


def run_all(args: argparse.Namespace, ctx: Ctx) -> dict[int, Result]:
    only = set(args.only) if args.only else set(TITLES)
    results = {sid: (realworld.RealResult if sid == realworld.SID else Result)(sid, TITLES[sid])
               for sid in sorted(only)}
    rounds = ctx.rounds

    def timed(sid: int, fn, *a) -> None:
        t = time.perf_counter()
        try:
            fn(*a)
        except Exception as e:  # a harness bug: keep the other scenarios' numbers
            results[sid].fail("harness", f"{type(e).__name__}: {e}")
        results[sid].seconds += time.perf_counter() - t

    for r in range(rounds):
        log(f"round {r + 1}/{rounds}")
        if 1 in only:
            timed(1, scenarios.s1_bringup, ctx, results[1], r)
        if 3 in only:
            timed(3, scenarios.s3_burst, ctx, results[3], r)
        if only & {4, 5, 7}:
            r4 = results.get(4) or Result(4, TITLES[4])
            r5 = results.get(5) or Result(5, TITLES[5])
            r7 = results.get(7) or Result(7, TITLES[7])
            idle = args.idle_seconds if 4 in only and r < args.idle_rounds else 0.0
            calls = args.status_calls if 5 in only else 0
            kills = args.kills if 7 in only else 0
            t = time.perf_counter()
            try:
                scenarios.s457_idle_status_restart(ctx, r4, r5, r7, r, idle, calls, kills)
            except Exception as e:  # a harness bug or a hung status call: record it, go on
                for res in (r4, r5, r7):
                    res.fail("harness", f"{type(e).__name__}: {e}")
            for sid in (4, 5, 7):
                if sid in results:
                    results[sid].seconds += (time.perf_counter() - t) / len(only & {4, 5, 7})
    if 1 in only and not args.no_breakdown:
        log("start-up breakdown (qasup only): -X importtime and the stage driver")
        t = time.perf_counter()
        try:
            results[1].extra["breakdown"] = startup.breakdown(ctx.folder("s1-breakdown"), ctx.marker, ctx.python,
                                                              scenarios.DAG, runs=2 if args.quick else 5)
        except Exception as e:  # a harness bug: keep the other numbers
            results[1].notes.append(f"start-up breakdown failed: {type(e).__name__}: {e}")
        results[1].seconds += time.perf_counter() - t
    if 2 in only:
        log("latency samples (qasup only)")
        settle()   # the bursts of scenario 3 leave ~190 MB for the kernel to write back: not during a tail measure
        timed(2, scenarios.s2_marker_latency, ctx, results[2], args.latency_seconds)
    if 6 in only:
        log(f"scale {', '.join(map(str, args.scale))}")
        timed(6, scenarios.s6_scale, ctx, results[6], tuple(args.scale), 3)
    if realworld.SID in only:
        log("real programs side by side: daemonizing nginx, Sanic with 4 workers")
        timed(realworld.SID, realworld.run, ctx, results[realworld.SID], args.quick)
    return results


METHOD = """\
## Method

One command, `python bench/run.py` (or `bench/run.sh`), does everything: it installs supervisord
(PyPI `supervisor` {sd}) into its own venv `bench/.venv-supervisord` (both projects are the top-level
package `supervisor`, so they never share an interpreter), and this checkout into `bench/.venv-qasup` the way
users get it (`pip install .`, not editable, as the Dockerfile does; an editable install's `.pth` finder costs
every interpreter of its venv ~20 ms here, `python -c pass` included), writes a stack folder per run under a
temporary directory, and runs qasup (that venv's `qasup --config DIR/qasup.toml up`, a unique `QASUP_SOCKET`) and
supervisord (`nodaemon=true`, `startsecs=0`, `autorestart=true`, `redirect_stderr=true`,
`stopasgroup/killasgroup`) on the same stand-in programs, in {rounds} rounds that alternate which daemon
goes first. Every number below is the median over rounds (and samples) unless the row says otherwise. Times
are wall-clock: launch is `time.time()` just before the daemon is spawned; qasup's own modules and its
dependencies' are compiled to bytecode first, as `pip install` leaves them; qasup's times come from the `ts`
of its `events.jsonl` events or from the arrival of its stdout lines; supervisord's from the arrival of its
log lines on stdout. Everything a daemon starts carries a marker in its environment and is killed at the
end, whatever happened.

1. **Bring-up**: 7 stand-ins (`sh -c 'sleep D; echo READY name; exec sleep 3600'`, D = 0.1-0.5 s) in a
   dependency graph whose critical path is {cp_path} = {cp:.2f} s. qasup starts each service when what it
   `requires` is ready and detects readiness from the `READY` line; supervisord has neither order nor
   readiness, so its number is "all RUNNING" with `startsecs=0` and is not comparable one to one: it is
   shown for reference. Note that supervisord spawns its programs on its first main-loop tick, about 1 s
   after launch. qasup's "first service spawned" is the first event that carries a pid. After the rounds,
   the start-up breakdown (qasup only, 5 runs; see "Where start-up time goes").
2. **Marker latency** (qasup only; supervisord has no readiness): 5 stand-ins print
   `READY pid=PID ts=time.time()` after a random 0.05-0.25 s, live 0.15 s, exit 1 and are restarted at
   once (`delay = "0s"`), for {lat_s:g} s; latency = the `ready` event's `ts` minus the `ts` in the line.
   Runs after the rounds, once the kernel has written back the bursts' dirty pages (`sync`, then a quiet second).
   Then the floor, for as long: `benchkit/markerfloor.py`, a bare asyncio program (standard library, the same
   interpreter) that keeps the same 5 stand-ins flapping (spawned from a worker thread, as qasup does) and takes
   `time.time()` as it reads each READY line: no units, scanning, state machine or event file.
3. **Burst** (twice per round and daemon, order q-s-s-q / s-q-q-s): a stand-in blocks on a FIFO, then
   `exec cat` of a 94 MB file (1 M numbered lines of 94 bytes). Time from opening the gate until the service's log file holds every byte (polled every 1 ms),
   then the log's SHA-1 is compared with the input's and the log deleted (`sync` before each burst, so no
   write-back of earlier files competes). qasup runs with `[stack] echo = false`, 10
   `[[on_log]]` rules (action warn, never matching) and `max_bytes = "1GiB"`; supervisord with
   `stdout_logfile_maxbytes=1GB`. `cat FILE | cat > OUT` is shown as the floor.
4. **Idle**: 7 idle stand-ins (`echo READY; exec sleep 3600`) under each daemon, both stacks up at the same
   time; after 1 s, utime+stime of the daemon process itself (`/proc/PID/stat`, not its children) over
   {idle:g} s, and its VmRSS (in the first {idle_rounds} rounds).
5. **Status**: `qasup status` vs `supervisorctl -c CONF status` (both their venvs' console scripts) against those stacks,
   {calls} calls each per round, alternating, timed from the outside (process start to exit), each pair
   followed by `PYTHON -c pass` (the floor: qasup's interpreter starting and doing nothing).
6. **Scale**: {sizes} services running `sleep 3600` (no readiness check: ready at spawn), one round:
   launch to the `all N services ready` line (qasup) / N `entered RUNNING state` lines (supervisord),
   status wall time (median of 3), the daemon's RSS, and the ordered shutdown time (SIGTERM to the
   daemon's exit, capped at 35 s, after which everything is killed and the row shows a failure).
7. **Restart**: SIGKILL of a service of the idle stacks ({kills} per round, alternating daemons); qasup with
   `[restart] delay = "0s"`: time to the event with the new pid and to its `ready` event; supervisord: time
   to its `spawned:` and `entered RUNNING state` lines.
"""


def reading(results: dict[int, Result]) -> list[str]:
    """Plain sentences that put the headline numbers side by side."""
    out = []

    def med(sid: int, metric: str, who: str) -> float | None:
        r = results.get(sid)
        return report.stat(r.samples.get(metric, {}).get(who), "median") if r else None

    q, st, sv = med(1, "ready_event_s", "qasup"), med(1, "startup_s", "qasup"), med(1, "running_s", "supervisord")
    if q is not None and st is not None:
        out.append(f"Bring-up: qasup had all 7 services ready {q:.2f} s after launch, {q - report.CP:.2f} s more "
                   f"than the {report.CP:.2f} s critical path; {st:.2f} s of that is its own start-up (interpreter, "
                   f"imports, plan) before the first event"
                   + (f", and its first service was spawned {sp:.0f} ms after launch (target 80 ms)."
                      if (sp := med(1, "spawn_ms", "qasup")) is not None else ".")
                   + (f" supervisord reported all 7 RUNNING after {sv:.2f} s, without knowing whether any was "
                      f"ready and without any order." if sv is not None else ""))
    qb, sb = med(3, "seconds", "qasup"), med(3, "seconds", "supervisord")
    if qb and sb:
        out.append(f"Burst: qasup captured the 94 MB in {qb:.3f} s against supervisord's {sb:.3f} s "
                   f"(ratio {qb / sb:.2f}) while scanning every line for 10 rules.")
    qr, sr = med(7, "back_ms", "qasup"), med(7, "back_ms", "supervisord")
    if qr and sr:
        out.append(f"Restart: qasup had a killed service ready again after {qr:.0f} ms; supervisord needs "
                   f"{sr:.0f} ms to call it RUNNING (it restarts on its next 1 s main-loop tick).")
    return out


def write_doc(path: Path, info: dict[str, str], args: argparse.Namespace, lines, results, total_s: float) -> None:
    bh = report.behind(lines, results)
    bounds = report.bounds(lines, results)
    loads = [float(info[k].split()[0]) for k in ("load average at start", "load average at end") if k in info]
    stolen = info.get("CPU time stolen by the hypervisor during the run", "unknown")
    busy = any(x > 0.5 * (os.cpu_count() or 1) for x in loads) or (
        stolen.endswith("%") and float(stolen.split()[0]) >= 3.0)
    notes = [f"Scenario {r.sid}: {n}" for r in results.values() for n in r.notes]
    real = results.get(realworld.SID)
    text = [
        "# Benchmarks: qasup vs supervisord",
        "",
        "Generated by `python bench/run.py`; do not edit by hand (run it again instead).",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        f"- harness: {args.rounds} rounds{' (--quick)' if args.quick else ''}, {total_s:.0f} s in all",
        "",
        METHOD.format(sd=info["supervisord"], rounds=args.rounds, cp=report.CP, cp_path=" -> ".join(report.CP_PATH),
                      lat_s=args.latency_seconds, idle=args.idle_seconds, idle_rounds=args.idle_rounds,
                      calls=args.status_calls,
                      sizes=" / ".join(map(str, args.scale)), kills=args.kills)
        + (realworld.method(args.quick) if realworld.SID in results else ""),
        "## Results",
        "",
        *(["The machine was busy during this run (see the load averages and the stolen CPU time above): expect "
           "noise, above all in the tails (p99) and in the one-round scale rows.", ""] if busy else []),
        report.markdown_table(report.evaluate(results, tuple(args.scale))),
        "",
        *[f"- {x}" for x in reading(results)],
        *([f"- {x}" for x in realworld.reading(real)] if isinstance(real, realworld.RealResult) else []),
        "",
        "`slower` / `bigger`: qasup's median is more than 5 % above supervisord's on a row without a target.",
        "",
        *(["## Real programs side by side (scenario 8)", "", *realworld.markdown(real)]
          if isinstance(real, realworld.RealResult) else []),
        *(["## Where start-up time goes (scenario 1)", "", *startup.markdown(results[1].extra["breakdown"])]
          if 1 in results and "breakdown" in results[1].extra else []),
        "## Where qasup is behind",
        "",
        *([f"- {b}" for b in bh] or ["- Nowhere in this run: every target is met."]),
        "",
        *(["## What bounds the targets not met", "", *[f"- {b}" for b in bounds], ""] if bounds else []),
    ]
    if notes:
        text += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    text += ["## Time per scenario", "",
             *[f"- {r.sid}. {r.title}: {r.seconds:.0f} s" for r in results.values()], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 rounds, shorter windows, scale 100 and 300")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5, --quick 2)")
    p.add_argument("--only", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="comma-separated scenario numbers (1-8)")
    p.add_argument("--python", default=None, help="the interpreter that runs qasup")
    p.add_argument("--scale", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="service counts for scenario 6 (default 100,300,1000; --quick 100,300)")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown report (default docs/benchmarks.md for a full run, none otherwise)")
    p.add_argument("--latency-seconds", type=float, default=None,
                   help="how long scenario 2 samples (default 48 s, about 700 markers; --quick 3 s)")
    p.add_argument("--keep", action="store_true", help="keep the temporary stack folders (for debugging)")
    p.add_argument("--no-breakdown", action="store_true",
                   help="skip scenario 1's start-up breakdown (-X importtime and the stage driver, ~20 s)")
    p.add_argument("--reliability", action="store_true",
                   help="also run the long reliability variants of the test suite (pytest -m long: a soak of "
                        "thousands of restarts); their outcome decides the exit code too")
    a = p.parse_args(argv)
    if a.only and not set(a.only) <= set(TITLES):
        p.error(f"--only takes scenario numbers 1-8, got {a.only}")
    a.rounds = a.rounds or (2 if a.quick else 5)
    a.scale = a.scale or ([100, 300] if a.quick else [100, 300, 1000])
    a.idle_seconds = 5.0 if a.quick else 10.0
    a.idle_rounds = min(a.rounds, 3)
    a.status_calls = 10
    a.kills = 3
    if a.latency_seconds is None:   # ~700 samples: the p99 is the 7th-worst one, not one unlucky wake-up
        a.latency_seconds = 3.0 if a.quick else 48.0
    if a.out is None and not a.quick and not a.only:
        a.out = REPO / "docs" / "benchmarks.md"
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    cpu_before = cpu_times()
    if args.python or os.environ.get("QASUP_PYTHON"):
        python = find_python(args.python)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        # bytecode as an installed package has it: an editable checkout under PYTHONDONTWRITEBYTECODE=1 would
        # otherwise compile qasup's modules at every start (and supervisord's are compiled by pip)
        subprocess.run([python, "-m", "compileall", "-q", str(REPO / "supervisor")], check=False)
    else:   # as users get it: `pip install .` into a venv of its own (benchkit.daemons.ensure_qasup)
        python = ensure_qasup(BENCH / ".venv-qasup", REPO, log)
        os.environ.pop("PYTHONPATH", None)
    # and qasup's dependencies (anyio, h11, typing_extensions, ...), as pip leaves them: a venv made with
    # PYTHONDONTWRITEBYTECODE=1 has none, and each start would compile them again (~35 ms of CPU here)
    subprocess.run([python, "-c", COMPILE_DEPENDENCIES], check=False)
    sd_version = ensure_supervisord(BENCH / ".venv-supervisord", log)
    info = machine(python, sd_version)
    log(f"qasup: {python} ({info['qasup']}); supervisord {sd_version}; {info['nproc']} x {info['cpu']}")
    marker = uuid.uuid4().hex[:12]
    os.environ["BENCH_RUN"] = marker
    tmp = Path(tempfile.mkdtemp(prefix="qasup-bench-", dir="/tmp"))
    ctx = Ctx(python=python, venv=BENCH / ".venv-supervisord", tmp=tmp, marker=marker,
              standin=BENCH / "benchkit" / "standin.py", rounds=args.rounds, quick=args.quick, log=log)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    results: dict[int, Result] = {}
    try:
        results = run_all(args, ctx)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        for d in list(ctx.live):
            ctx.stop(d, timeout=5)
        left = kill_marked("BENCH_RUN", marker)
        if left:
            log(f"killed {left} leftover process(es)")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - began
    info["load average at end"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    info["CPU time stolen by the hypervisor during the run"] = steal_share(cpu_before, cpu_times())
    lines = report.evaluate(results, tuple(args.scale))
    print()
    print(report.console_table(lines))
    if isinstance(real := results.get(realworld.SID), realworld.RealResult):
        print(realworld.console(real))
    if 1 in results and "breakdown" in results[1].extra:
        print()
        print("\n".join(startup.markdown(results[1].extra["breakdown"])))
    for b in report.behind(lines, results):
        print(f"  behind: {b}")
    out_dir = BENCH / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(
        {"machine": info, "rounds": args.rounds, "quick": args.quick, "seconds": round(total, 1),
         "results": [r.to_json() for r in results.values()]}, indent=1))
    if args.out:
        write_doc(args.out, info, args, lines, results, total)
        log(f"wrote {args.out}")
    log(f"done in {total:.0f} s")
    failed = any(r.failures for r in results.values())
    if args.reliability:
        log("reliability: pytest -m long")
        r = subprocess.run([python, "-m", "pytest", "-q", "-m", "long", str(REPO / "tests")], cwd=REPO)
        failed = failed or r.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
