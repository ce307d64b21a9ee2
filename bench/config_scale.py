"""How ``qasup check`` and ``qasup plan --json`` scale with the size of a stack.

Generates a stack of N units (default 1000) in a temporary folder: a layered DAG, each unit ``requires``
one to three units of earlier layers and is ``after`` one more, with a ``[ready]`` table (log regex, http or
tcp check), two ``[[on_log]]`` rules, ``env`` with ``${NAME}`` references, a few ``provides`` names, units
disabled by ``enabled = false`` (only ever ``after``-ed) and a handful of GPU loaders (``gpu`` + ``vram_mib``,
so the plan orders them, largest first, on a declared inventory of two GPUs). Then runs each command as a
subprocess, as a user would, and prints the median wall time of 5 runs. Target: < 1 s each.

    python bench/config_scale.py [--units 1000] [--runs 5] [--keep DIR] [--profile]

``--profile`` also prints the top of a cProfile of one ``plan --json`` run in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GPUS = json.dumps([
    {"index": 0, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564, "memory_free_mib": 24000,
     "compute_capability": "8.9"},
    {"index": 1, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564, "memory_free_mib": 24000,
     "compute_capability": "8.9"}])


def generate(root: Path, n: int, seed: int = 7) -> None:
    """Write ``qasup.toml`` and ``services.d/*.toml`` for an ``n``-unit stack under ``root``."""
    rng = random.Random(seed)
    services = root / "services.d"
    services.mkdir(parents=True)
    (root / "qasup.toml").write_text(
        '[stack]\nname = "scale"\nstop_budget = "10m"\nbanner = "ready at http://${USER_IP}:8777/"\n'
        '[plan]\nllm_api = "local"\ndevice_id = "0,1"\nruntime_backend = "vllm"\nmodel_name = "m"\n'
        'model_size = "7B"\n')
    (root / "common.env").write_text("BASE_PORT=9000\nLOG_LEVEL=info\n")
    layers = max(2, int(n ** 0.5) // 2)
    names = [f"svc-{i:04d}" for i in range(n)]
    layer_of = {name: min(layers - 1, i * layers // n) for i, name in enumerate(names)}
    by_layer: dict[int, list[str]] = {}
    for name, k in layer_of.items():
        by_layer.setdefault(k, []).append(name)
    disabled = set(rng.sample(names[n // 2:], max(1, n // 50)))
    loaders = rng.sample([x for x in names if x not in disabled], min(12, n // 4))
    for i, name in enumerate(names):
        k = layer_of[name]
        earlier = [x for j in range(k) for x in by_layer[j] if x not in disabled]
        req = sorted(set(rng.sample(earlier, min(len(earlier), rng.randint(1, 3))))) if earlier else []
        aft_pool = [x for j in range(k) for x in by_layer[j] if x not in req]
        aft = [rng.choice(aft_pool)] if aft_pool and rng.random() < 0.7 else []
        port = 10000 + i
        lines = [
            f'description = "generated unit {i} (layer {k})"',
            f'command = ["${{QASUP_PYTHON}}", "-u", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]',
            'env_files = ["common.env"]',
            f'env = {{ PORT = "{port}", LEVEL = "${{LOG_LEVEL}}", UPSTREAM = "http://127.0.0.1:${{BASE_PORT}}/" }}',
            f"requires = {json.dumps(req)}",
            f"after = {json.dumps(aft)}",
        ]
        if name in disabled:
            lines.append("enabled = false")
        if i % 97 == 5:
            lines.append(f'provides = ["virtual-{i}"]')
        if name in loaders:
            lines += [f'gpu = "{rng.choice(["llm", "embed"])}"', f"vram_mib = {rng.randint(1, 8) * 250}"]
        lines += ["", "[ready]"]
        kind = i % 3
        if kind == 0:
            lines.append("log = 'Serving HTTP on .* port \\d+'")
        elif kind == 1:
            lines.append('http = { url = "http://127.0.0.1:${PORT}/", method = "GET" }')
        else:
            lines.append('tcp = "127.0.0.1:${PORT}"')
        lines += ['timeout = "60s"', 'interval = "500ms"', "", "[restart]", 'policy = "on-failure"',
                  'delay = "1s"', 'max_delay = "30s"', "", "[stop]", 'signal = "SIGTERM"', 'timeout = "5s"', "",
                  "[[on_log]]", "match = 'CUDA out of memory'", 'action = "abort"',
                  'message = "${QASUP_SERVICE} ran out of GPU memory"', "",
                  "[[on_log]]", "match = '(?i)address already in use'", 'action = "fail"', "count = 2",
                  'within = "30s"', ""]
        (services / f"{name}.toml").write_text("\n".join(lines))


def time_command(args: list[str], cwd: Path, runs: int) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Median wall time and median CPU time (user + system) of ``runs`` runs, and the last result.
    CPU time does not depend on what else the machine runs; on an idle machine wall ~= CPU."""
    env = dict(os.environ, QASUP_GPUS=GPUS)
    walls, cpus, last = [], [], None
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        last = subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=cwd, env=env, text=True,
                              capture_output=True, timeout=300)
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    assert last is not None
    return statistics.median(walls), statistics.median(cpus), last


def profile(root: Path) -> None:
    import cProfile
    import io
    import pstats

    os.environ["QASUP_GPUS"] = GPUS
    old = os.getcwd()
    os.chdir(root)
    try:
        from supervisor.cli.main import main

        pr = cProfile.Profile()
        out = io.StringIO()
        real = sys.stdout
        sys.stdout = out
        pr.enable()
        main(["plan", "--json"])
        pr.disable()
        sys.stdout = real
        pstats.Stats(pr).sort_stats("cumulative").print_stats(25)
    finally:
        os.chdir(old)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="write the stack here and keep it")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="qasup-scale-"))
    if a.keep and root.exists():
        shutil.rmtree(root)
    try:
        generate(root, a.units)
        baseline, base_cpu, _ = time_command(["--version"], root, a.runs)
        ok = True
        print(f"stack: {a.units} units in {root}; medians of {a.runs} runs (wall / cpu); python start-up + "
              f"CLI import (qasup --version): {baseline:.3f}s / {base_cpu:.3f}s")
        for args in (["check"], ["plan", "--json"]):
            t, cpu, r = time_command(args, root, a.runs)
            detail = r.stdout.strip().splitlines()[0] if args == ["check"] else ""
            if args[0] == "plan" and r.returncode in (0, 1):
                p = json.loads(r.stdout)
                detail = (f"{len(p['waves'])} waves, {sum(s['enabled'] for s in p['services'])} enabled, "
                          f"{len(p['gpu_order'])} gpu ordering edges, feasible={p['feasible']}")
            good = r.returncode == 0 and t < 1.0
            ok &= good
            print(f"qasup {' '.join(args):<12} {t:.3f}s / {cpu:.3f}s  exit {r.returncode}  "
                  f"{'ok' if good else 'SLOW/FAILED'}  "
                  f"{detail}")
            if r.returncode not in (0, 1):
                print(r.stderr[-2000:], file=sys.stderr)
        if a.profile:
            profile(root)
        return 0 if ok else 1
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
