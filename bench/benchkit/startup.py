"""Where qasup's start-up time goes, from launch to the first service spawned (scenario 1's breakdown).

Two views, both on scenario 1's 7 units (each prints a line as soon as it runs, so the first service output
marks the first spawn):

* **imports**: ``PYTHON -X importtime -m supervisor up`` with stderr and stdout on one pipe, so the order of
  the lines is the order of the writes; the imports before the first service line are those done before the
  first spawn. Per module the smallest self time over the runs (``-X importtime`` adds its own overhead, a
  few microseconds per module), summed by group: the interpreter's own start (``site``, before ``runpy``),
  qasup by package, each third-party package, the standard library by module;
* **stages**: :mod:`benchkit.startup_driver` runs what ``qasup up`` runs, stage by stage, and writes
  ``time.time()`` after each; the medians of the gaps from launch to the first event with a pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from benchkit.daemons import Prog, Qasup
from benchkit.procs import EventsTail

DRIVER = Path(__file__).with_name("startup_driver.py")
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
BEFORE_MAIN = "(interpreter start: site, encodings, .pth files)"


def progs(dag: dict[str, tuple[float, tuple[str, ...]]]) -> list[Prog]:
    return [Prog(n, ["/bin/sh", "-c", f"echo RUNNING {n}; sleep {d}; echo READY {n}; exec sleep 3600"],
                 requires=deps, ready_log="^READY ") for n, (d, deps) in dag.items()]


def _group(module: str, before_main: bool) -> str:
    if before_main:
        return BEFORE_MAIN
    top = module.partition(".")[0]
    if top == "supervisor":
        parts = module.split(".")
        return "qasup: " + (".".join(parts[:2]) if len(parts) > 1 else "supervisor")
    if top in sys.stdlib_module_names or top.startswith("_"):
        return f"stdlib: {top}"
    return f"third party: {top}"


def _run_importtime(d: Qasup, n: int, timeout: float = 30.0) -> tuple[dict[str, int], dict[str, int], float]:
    """One ``-X importtime up``: (self µs of modules before the first service line, after it, wall seconds
    from launch to that line)."""
    env = d.environment()
    argv = [d.python, "-X", "importtime", "-m", "supervisor", "--config", str(d.config), "up"]
    t0 = time.time()
    proc = subprocess.Popen(argv, cwd=d.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    seen_main = False
    first_line: float | None = None
    ready = 0
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            m = IMPORT_LINE.match(line)
            if m:
                name = m.group(4)
                if name == "runpy":
                    seen_main = True
                target = before if first_line is None else after
                key = _group(name, not seen_main) + "\0" + name
                target[key] = target.get(key, 0) + int(m.group(1))
                continue
            if first_line is None and " | RUNNING " in line:
                first_line = time.time()
            if " | READY " in line:
                ready += 1
                if ready >= n:
                    break
            if time.monotonic() > deadline:
                break
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        proc.stdout.close()
    if first_line is None:
        raise RuntimeError("no service output seen under -X importtime")
    return before, after, first_line - t0


def _run_driver(d: Qasup, n: int, timeout: float = 30.0) -> list[tuple[str, float]]:
    """One run of the stage driver: [(stage, seconds since the previous mark)], ending at the first pid."""
    env = d.environment()
    argv = [d.python, str(DRIVER), "--config", str(d.config), "up"]
    t0 = time.time()
    proc = subprocess.Popen(argv, cwd=d.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    d.events.path.unlink(missing_ok=True)
    try:
        assert proc.stdout is not None
        ready, deadline = 0, time.monotonic() + timeout
        for raw in proc.stdout:
            if b" | READY " in raw:
                ready += 1
                if ready >= n or time.monotonic() > deadline:
                    break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=5)
    marks = [line for line in err.decode("utf-8", "replace").splitlines() if line.startswith("QASUP-STAGES ")]
    if not marks:
        raise RuntimeError(f"the stage driver wrote no marks: {err.decode('utf-8', 'replace')[-300:]}")
    points = [(k, float(v)) for k, v in json.loads(marks[0].split(" ", 1)[1])]
    events = EventsTail(d.events.path)
    events.poll()
    pids = [e["ts"] for e in events.events if "pid" in e and e.get("service")]
    starting = [e["ts"] for e in events.events if e.get("state") == "starting" and e.get("service")]
    if not pids or not starting:
        raise RuntimeError("the stage driver's run has no spawn in events.jsonl")
    points += [("the engine: daemon set-up to the first `starting` event (lock, reaper, guardian, API)",
                min(starting)), ("the first spawn: `starting` to the event with its pid", min(pids))]
    out, prev = [], t0
    for k, t in points:
        out.append((k, t - prev))
        prev = t
    return out


PLAN_FLOOR = ("... after qasup's own reading and checking of the units and its plan (`load_plan`), with no event "
              "loop: the least a qasup that spawned its first services before the loop would need")
_CHILD = "['/bin/sh', '-c', 'echo \" | RUNNING floor\"']"
FLOORS = (
    ("Python starts and spawns a process (`import subprocess; subprocess.Popen(...)`)",
     f"import subprocess; subprocess.Popen({_CHILD})"),
    ("... after reading the 7 unit files with `tomllib` (the least any Python supervisor of TOML units does)",
     "import os, subprocess, sys, tomllib\nd = sys.argv[1]\n"
     "units = [tomllib.load(open(os.path.join(d, f), 'rb')) for f in sorted(os.listdir(d))]\n"
     f"subprocess.Popen({_CHILD})"),
    ("... from inside `anyio.run` (asyncio backend), as every anyio program must",
     f"import subprocess, anyio\nasync def main():\n    subprocess.Popen({_CHILD})\nanyio.run(main)"),
    (PLAN_FLOOR,
     "import subprocess, sys\nfrom pathlib import Path\nfrom supervisor.plan.pipeline import PlanRequest, load_plan\n"
     f"load_plan(PlanRequest(config=Path(sys.argv[1]).parent))\nsubprocess.Popen({_CHILD})"),
)
"""Floors for launch -> first spawn, measured the same way as qasup's first service line (``-X importtime``
aside): the arrival of the child's first line on the pipe that the launcher's stdout is."""


def _run_floor(python: str, code: str, units: Path, env: dict[str, str], timeout: float = 10.0) -> float:
    """Seconds from launch to the floor program's child's first line."""
    t0 = time.time()
    proc = subprocess.Popen([python, "-c", code, str(units)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        took = time.time() - t0
    finally:
        proc.wait(timeout)
        proc.stdout.close()
    if b"RUNNING floor" not in line:
        raise RuntimeError(f"floor program printed {line[:80]!r}")
    return took


def breakdown(folder: Path, marker: str, python: str, dag: dict[str, tuple[float, tuple[str, ...]]],
              runs: int = 5) -> dict:
    """Both views over ``runs`` runs each, alternating; a JSON-able dict (see :func:`markdown`)."""
    befores: list[dict[str, int]] = []
    afters: list[dict[str, int]] = []
    walls: list[float] = []
    stages: dict[str, list[float]] = defaultdict(list)
    order: list[str] = []
    floors: dict[str, list[float]] = defaultdict(list)
    for i in range(runs):
        d = Qasup(folder / f"imp{i}", marker, python, progs(dag))
        b, a, w = _run_importtime(d, len(dag))
        befores.append(b)
        afters.append(a)
        walls.append(w)
        d2 = Qasup(folder / f"drv{i}", marker, python, progs(dag))
        for k, s in _run_driver(d2, len(dag)):
            if k not in stages:
                order.append(k)
            stages[k].append(s * 1000)
        for label, code in FLOORS:
            floors[label].append(_run_floor(python, code, d2.root / "services.d", d2.environment()) * 1000)

    def min_self(maps: list[dict[str, int]]) -> dict[str, float]:
        keys = set().union(*maps)
        return {k: min(m.get(k, 0) for m in maps) / 1000 for k in keys}

    before, after = min_self(befores), min_self(afters)
    groups: dict[str, float] = defaultdict(float)
    for k, ms in before.items():
        groups[k.split("\0")[0]] += ms
    top = sorted(((ms, k.split("\0")[1]) for k, ms in before.items()), reverse=True)[:15]
    return {
        "runs": runs,
        "importtime_first_line_ms": statistics.median(walls) * 1000,
        "imports_before_ms": sum(before.values()), "modules_before": len(before),
        "imports_after_ms": sum(after.values()), "modules_after": len(after),
        "groups": sorted(groups.items(), key=lambda kv: -kv[1]),
        "top_modules": [(name, ms) for ms, name in top],
        "stages": [(k, statistics.median(stages[k])) for k in order],
        "stages_total_ms": statistics.median([sum(v[i] for v in stages.values()) for i in range(runs)]),
        "floors": [(label, statistics.median(floors[label])) for label, _ in FLOORS],
    }


def markdown(b: dict) -> list[str]:
    """The report's section: stages, then imports by group and the largest modules."""
    small = [g for g in b["groups"] if g[1] < 1.5]
    out = [
        f"From launch to the first service spawned, qasup `up` on scenario 1's 7 units; {b['runs']} runs of "
        "each view, on the same machine as the table above.",
        "",
        f"**Stages** (a driver runs what `qasup up` runs, stage by stage; medians of the gaps; together "
        f"{b['stages_total_ms']:.0f} ms):",
        "",
        "| stage | ms |",
        "|---|---|",
        *[f"| {k} | {ms:.1f} |" for k, ms in b["stages"]],
        "",
        f"**Imports before the first spawn** (`-X importtime`, the smallest self time of each module over the "
        f"runs, summed by group): {b['modules_before']} modules, {b['imports_before_ms']:.0f} ms; "
        f"{b['modules_after']} more after the first spawn ({b['imports_after_ms']:.0f} ms, not on the path "
        f"to it). Under `-X importtime` the first service printed {b['importtime_first_line_ms']:.0f} ms "
        f"after launch.",
        "",
        "| group | ms |",
        "|---|---|",
        *[f"| {g} | {ms:.1f} |" for g, ms in b["groups"] if ms >= 1.5],
        *([f"| {len(small)} smaller groups | {sum(ms for _, ms in small):.1f} |"] if small else []),
        "",
        "The largest modules (self time): " + ", ".join(f"`{n}` {ms:.1f} ms" for n, ms in b["top_modules"]) + ".",
        "",
    ]
    if b.get("floors"):
        out += [
            "**Floors** (what bounds the first spawn: programs that do only this, timed the same way, launch to "
            "their child's first line, medians over the same runs):",
            "",
            "| program | ms |",
            "|---|---|",
            *[f"| {label} | {ms:.1f} |" for label, ms in b["floors"]],
            "",
        ]
    return out
