"""Summaries of the raw samples: the console table and ``docs/benchmarks.md``.

Every row says which statistic it shows, what the target is and whether qasup meets it; rows without a
target still say plainly when qasup is slower or bigger than supervisord.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchkit.procs import median, percentile
from benchkit.scenarios import DAG, PASS, QASUP, SV, Result, critical_path

CP, CP_PATH = critical_path(DAG)
READY_SLACK = 0.100   # s: the DAG is to be ready within the critical path + this, from launch


@dataclass
class Row:
    sid: int
    label: str
    metric: str
    unit: str
    agg: str = "median"                       # median | p99 | max | n
    target: str = ""
    check: Callable[[float, float | None], bool] | None = None   # (qasup, other) -> target met
    ref: float | None = None                  # a fixed reference instead of supervisord's number
    ref_label: str = ""
    other: str = SV                           # whose number is compared (supervisord, or "cat | cat")
    lower_is_better: bool = True


def rows(scale_sizes: tuple[int, ...]) -> list[Row]:
    out = [
        Row(1, "7-service DAG: launch to all ready (events.jsonl)", "ready_event_s", "s", ref=CP,
            ref_label="critical path", target=f"<= {CP + READY_SLACK:.2f} s (critical path + 100 ms)",
            check=lambda q, r: q <= CP + READY_SLACK),
        Row(1, "7-service DAG: launch to the `all 7 services ready` line", "ready_line_s", "s", ref=CP,
            ref_label="critical path"),
        Row(1, "qasup: launch to its first service spawned (the first event with a pid)", "spawn_ms", "ms",
            other="", target="<= 80 ms", check=lambda q, r: q <= 80),
        Row(1, "qasup: launch to its first event (interpreter, imports, plan)", "startup_s", "s", other=""),
        Row(1, "qasup: scheduling overhead beyond the critical path, after start-up", "sched_overhead_s", "s",
            other=""),
        Row(1, "supervisord: launch to all 7 RUNNING (no readiness, no order)", "running_s", "s", other=""),
        Row(1, "supervisord: launch to its first spawn", "first_spawn_s", "s", other=""),
        Row(2, "log marker to `ready` event, median", "latency_ms", "ms", target="< 5 ms", other="",
            check=lambda q, r: q < 5),
        Row(2, "log marker to `ready` event, p99", "latency_ms", "ms", agg="p99", target="< 5 ms", other="",
            check=lambda q, r: q < 5),
        Row(2, "samples", "latency_ms", "", agg="n", other=""),
        Row(2, "floor: a bare asyncio reader of the same flapping stand-ins (benchkit/markerfloor.py), median",
            "floor_latency_ms", "ms", other=""),
        Row(2, "floor: the same, p99", "floor_latency_ms", "ms", agg="p99", other=""),
        Row(3, "94 MB burst: gate opened to every byte in the log", "seconds", "s", target="ratio <= 1.0",
            check=lambda q, r: r is not None and q <= r),
        Row(3, "94 MB burst: median of the paired ratios (qasup / supervisord, same round)", "seconds", "x",
            agg="pair_ratio", other="", target="<= 1.0", check=lambda q, r: q <= 1.0),
        Row(3, "the same burst through `cat | cat > file` (the floor)", "seconds", "s", other="cat | cat"),
        Row(3, "daemon CPU time during the burst (user + system; qasup scans 10 rules)", "cpu_ms", "ms"),
        Row(3, "bytes lost", "lost_bytes", "bytes", agg="max", target="0",
            check=lambda q, r: q == 0),
        Row(4, "daemon CPU ticks in the idle window, 7 idle services", "idle_ticks", "ticks", agg="max",
            target="0", check=lambda q, r: q == 0),
        Row(4, "daemon resident memory (VmRSS), 7 idle services", "rss_mib", "MiB",
            target="<= supervisord", check=lambda q, r: r is not None and q <= r),
        Row(4, "qasup's guardian process (kills the stack if qasup is SIGKILLed), VmRSS", "guardian_rss_mib",
            "MiB", other=""),
        Row(5, "`qasup status` vs `supervisorctl status`, wall time per call", "status_ms", "ms",
            target="ratio <= 0.30", check=lambda q, r: r is not None and q <= 0.30 * r),
        Row(5, "`qasup status` vs `python -c pass` (the same interpreter, in the same loop)", "status_ms", "ms",
            other=PASS, target="ratio <= 2.5", check=lambda q, r: r is not None and q <= 2.5 * r),
    ]
    for n in scale_sizes:
        out += [
            Row(6, f"{n} services: launch to all ready (qasup) / all RUNNING (supervisord)", f"up_{n}_s", "s"),
            Row(6, f"{n} services: status wall time per call", f"status_{n}_ms", "ms",
                **({"target": "< 100 ms", "check": lambda q, r: q < 100} if n == 1000 else {})),
            Row(6, f"{n} services: daemon resident memory", f"rss_{n}_mib", "MiB",
                **({"target": "<= supervisord", "check": lambda q, r: r is not None and q <= r}
                   if n in (300, 1000) else {})),
            Row(6, f"{n} services: ordered shutdown (SIGTERM to exit)", f"stop_{n}_s", "s"),
        ]
    if len(scale_sizes) > 1:
        lo, hi = min(scale_sizes), max(scale_sizes)
        out.append(Row(6, f"per idle service: (RSS at {hi} - RSS at {lo}) / {hi - lo}", "per_service_kib", "KiB",
                       target="<= ~12 KiB", check=lambda q, r: q <= 12.5))
        out += [Row(6, f"floor: an anyio program's RSS per pipe{what} (slope {lo} to {hi}; benchkit/taskfloor.py)",
                    f"floor_{t}_kib", "KiB", other="")
                for t, what in ((0, " with no task"), (1, " + 1 task waiting on it"), (2, " + 2 tasks"))]
    out += [
        Row(7, "SIGKILL of a service to its new pid", "new_pid_ms", "ms"),
        Row(7, "SIGKILL to ready again (qasup) / RUNNING again (supervisord)", "back_ms", "ms"),
    ]
    return out


def stat(xs: list[float] | None, agg: str) -> float | None:
    if not xs:
        return None
    if agg == "median":
        return median(xs)
    if agg == "p99":
        return percentile(xs, 99)
    if agg == "max":
        return max(xs)
    if agg == "n":
        return float(len(xs))
    raise ValueError(agg)


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "ms":
        return f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "x":
        return f"{v:.2f}x"
    if unit in ("MiB", "KiB"):
        return f"{v:.1f} {unit}"
    if unit in ("ticks", "bytes", ""):
        return f"{v:.0f}" + (f" {unit}" if unit else "")
    return f"{v:g} {unit}"


@dataclass
class Line:
    row: Row
    q: float | None
    o: float | None
    ratio: float | None
    verdict: str
    failed: bool


def evaluate(results: dict[int, Result], scale_sizes: tuple[int, ...]) -> list[Line]:
    lines = []
    for row in rows(scale_sizes):
        res = results.get(row.sid)
        if res is None:
            continue
        samples = res.samples.get(row.metric, {})
        if row.agg == "pair_ratio":
            pairs = list(zip(samples.get(QASUP, []), samples.get(SV, [])))
            q = median(a / b for a, b in pairs if b) if pairs else None
        else:
            q = stat(samples.get(QASUP), row.agg)
        o = row.ref if row.ref is not None else (stat(samples.get(row.other), row.agg) if row.other else None)
        ratio = q / o if q is not None and o else None
        failed = q is None and any(f.startswith(QASUP) for f in res.failures)
        if row.metric.startswith(("running", "first_spawn")):
            q, o = stat(samples.get(SV), row.agg), None
            failed = q is None and any(f.startswith(SV) for f in res.failures)
            ratio = None
        if failed:
            verdict = "FAILED"
        elif row.check is not None and q is not None:
            verdict = "ok" if row.check(q, o) else "BEHIND"
        elif q is not None and o is not None and row.ref is None and row.other == SV and row.unit != "":
            verdict = "slower" if (q > o * 1.05 and row.lower_is_better) else ""
            if verdict and row.unit == "MiB":
                verdict = "bigger"
        else:
            verdict = ""
        lines.append(Line(row, q, o, ratio, verdict, failed))
    return lines


def other_name(row: Row) -> str:
    return row.ref_label if row.ref is not None else row.other


def console_table(lines: list[Line]) -> str:
    out = [f"{'#':>2} {'measurement':<72} {'qasup':>12} {'other':>22} {'ratio':>7}  verdict"]
    for ln in lines:
        o = f"{fmt(ln.o, ln.row.unit)} ({other_name(ln.row)})" if ln.o is not None else "-"
        r = f"{ln.ratio:.2f}" if ln.ratio is not None else "-"
        q = fmt(ln.q, ln.row.unit)
        if ln.row.metric.startswith(("running", "first_spawn")):
            q, o = "-", f"{fmt(ln.q, ln.row.unit)} (supervisord)"
        out.append(f"{ln.row.sid:>2} {ln.row.label[:72]:<72} {q:>12} {o:>22} {r:>7}  {ln.verdict}")
    return "\n".join(out)


def markdown_table(lines: list[Line]) -> str:
    out = ["| # | measurement | qasup | supervisord (or reference) | qasup / other | target | verdict |",
           "|---|---|---|---|---|---|---|"]
    for ln in lines:
        q, o = fmt(ln.q, ln.row.unit), (f"{fmt(ln.o, ln.row.unit)} ({other_name(ln.row)})"
                                        if ln.o is not None else "-")
        if ln.row.metric.startswith(("running", "first_spawn")):
            q, o = "-", fmt(ln.q, ln.row.unit)
        agg = {"max": " (worst)", "p99": ""}.get(ln.row.agg, "")
        r = f"{ln.ratio:.2f}" if ln.ratio is not None else "-"
        verdict = f"**{ln.verdict}**" if ln.verdict in ("BEHIND", "FAILED", "slower", "bigger") else ln.verdict
        cells = [str(ln.row.sid), ln.row.label + agg, q, o, r, ln.row.target or "-", verdict]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


def behind(lines: list[Line], results: dict[int, Result]) -> list[str]:
    """Plain sentences: every missed target, every row where qasup is slower or bigger, every failure."""
    out = []
    for ln in lines:
        if ln.verdict == "BEHIND":
            out.append(f"Scenario {ln.row.sid}, {ln.row.label}: qasup {fmt(ln.q, ln.row.unit)} misses the target "
                       f"({ln.row.target})" + (f"; {other_name(ln.row)}: {fmt(ln.o, ln.row.unit)}"
                                               if ln.o is not None else "") + ".")
        elif ln.verdict in ("slower", "bigger"):
            out.append(f"Scenario {ln.row.sid}, {ln.row.label}: qasup {fmt(ln.q, ln.row.unit)} vs supervisord "
                       f"{fmt(ln.o, ln.row.unit)} ({ln.ratio:.2f}x).")
    for res in results.values():
        out += [f"Scenario {res.sid}, {m}." for m in getattr(res, "misses", [])]   # realworld.RealResult
        for f in res.failures:
            out.append(f"Scenario {res.sid} failed: {f}")
    return out


def bounds(lines: list[Line], results: dict[int, Result]) -> list[str]:
    """For each missed target, what bounds it, from numbers measured in the same run."""
    out = []
    missed = {ln.row.metric + "/" + ln.row.agg: ln for ln in lines if ln.verdict == "BEHIND"}
    r1 = results.get(1)
    floors = dict((r1.extra.get("breakdown") or {}).get("floors") or []) if r1 else {}
    anyio_floor = next((ms for label, ms in floors.items() if "anyio.run" in label), None)
    toml_floor = next((ms for label, ms in floors.items() if "tomllib" in label), None)
    plan_floor = next((ms for label, ms in floors.items() if "load_plan" in label), None)

    def med(sid: int, metric: str, who: str = QASUP) -> float | None:
        r = results.get(sid)
        return stat(r.samples.get(metric, {}).get(who), "median") if r else None

    spawn = missed.get("spawn_ms/median")
    if spawn is not None and spawn.q is not None and anyio_floor is not None and toml_floor is not None:
        out.append(f"First spawn ({spawn.q:.0f} ms, target 80 ms): here a Python program that only reads the 7 unit "
                   f"files with tomllib and spawns one process needs {toml_floor:.0f} ms from launch to the child's "
                   f"first line, and one that spawns from inside `anyio.run` (qasup's event loop: asyncio and anyio "
                   f"imported and started) {anyio_floor:.0f} ms, before any of qasup's own code; qasup's own "
                   f"share (checking the units, the plan, the lock, the guardian, the cgroups, the engine) is the "
                   f"rest, {spawn.q - anyio_floor:.0f} ms (\"Where start-up time goes\" breaks it down). "
                   + (f"Spawning the first services before the event loop exists would not meet it either: a "
                      f"program that only runs qasup's reading and checking of the units and its plan "
                      f"(`load_plan`), then spawns one process, with no event loop, needs {plan_floor:.0f} ms."
                      if plan_floor is not None and plan_floor > 80 else
                      f"Meeting 80 ms would take spawning the first services before the event loop exists (a "
                      f"program that runs only qasup's `load_plan` and then spawns needs {plan_floor:.0f} ms)."
                      if plan_floor is not None else
                      "Meeting 80 ms would take spawning the first services before the event loop exists."))
    dag = missed.get("ready_event_s/median")
    if dag is not None and dag.q is not None and anyio_floor is not None:
        sched = med(1, "sched_overhead_s")
        out.append(f"7-service DAG ({dag.q:.3f} s, target critical path + 100 ms = {CP + READY_SLACK:.2f} s): the "
                   f"anyio floor above alone is {anyio_floor:.0f} ms, more than the 100 ms of slack, so no anyio "
                   f"program can meet it here; beyond its own start-up, qasup's scheduling along the critical path "
                   f"costs {sched * 1000:.0f} ms."
                   + (f" Nor would spawning before the loop: the critical path would then start no earlier than the "
                      f"`load_plan` floor, {plan_floor:.0f} ms after launch."
                      if plan_floor is not None and plan_floor > READY_SLACK * 1000 else "")
                   if sched is not None else
                   f"7-service DAG ({dag.q:.3f} s): bounded by the start-up floors above.")
    lat = missed.get("latency_ms/p99")
    r2 = results.get(2)
    floor_p99 = stat(r2.samples.get("floor_latency_ms", {}).get(QASUP), "p99") if r2 else None
    if lat is not None and lat.q is not None and floor_p99 is not None:
        out.append(f"Marker latency p99 ({lat.q:.2f} ms, target 5 ms): a bare asyncio program that keeps the same "
                   f"5 stand-ins flapping and only timestamps their READY lines as it reads them has a p99 of "
                   f"{floor_p99:.2f} ms here, in the same run: the wake-up of a reader on 2 CPUs that the stand-ins' "
                   f"start-ups keep busy. qasup's tail adds {lat.q - floor_p99:.2f} ms to it: its event loop does "
                   f"more per restart (exit, cgroup, events, the next spawn), so it is preempted more often while "
                   f"a marker waits.")
    st = missed.get("status_ms/median")
    pass_ms = med(5, "status_ms", PASS)
    q5 = med(5, "status_ms")
    if st is not None and pass_ms is not None and q5 is not None:
        out.append(f"`qasup status` ({q5:.1f} ms): the interpreter alone (`python -c pass`) takes {pass_ms:.1f} ms "
                   f"here; qasup's share is {q5 - pass_ms:.1f} ms (pip's console script imports `re`, then "
                   f"`supervisor.protocol` with its enums, the socket round trip, the table the daemon drew).")
    big = missed.get("status_1000_ms/median")
    if big is not None and big.q is not None and q5 is not None:
        out.append(f"1000-service status ({big.q:.0f} ms, target < 100 ms): the same call with 7 services takes "
                   f"{q5:.0f} ms, so {big.q - q5:.0f} ms go to 993 more rows: the daemon builds each row (a dict of "
                   f"15 keys), masks and draws the table (~48 KB of text), and the client writes it.")
    for key in ("rss_300_mib/median", "rss_1000_mib/median", "per_service_kib/median"):
        ln = missed.get(key)
        if ln is not None and ln.q is not None:
            per_sv = med(6, "per_service_kib", SV)
            per_q = med(6, "per_service_kib")
            f0, f1, f2 = (med(6, f"floor_{t}_kib") for t in (0, 1, 2))
            if per_q is not None and per_sv is not None:
                floor = (f" An anyio task costs {f1 - f0:.1f} KiB by itself here (the floor rows); an idle qasup "
                         f"service holds none (a quiet run parks on a loop reader and a future), so what it costs "
                         f"is its data: unit, plan, service and run objects, counters, environment."
                         if None not in (f0, f1, f2) else "")
                out.append(f"Memory ({ln.row.label}: {fmt(ln.q, ln.row.unit)}): one more idle service costs qasup "
                           f"{per_q:.1f} KiB and supervisord {per_sv:.1f} KiB here.{floor}")
            break
    return out
