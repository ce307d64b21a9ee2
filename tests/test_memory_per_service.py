"""What an idle service costs the daemon: Python memory per running service, measured in-process.

A stack of idle ``sleep`` services is run by the real engine (real processes, pipes, reaper) under
``tracemalloc``; the memory still held once every service is ready, between two stack sizes, divided by the
difference, is the cost of one more service (the fixed costs cancel). Allocation sizes do not depend on timing,
so the number is stable run to run (within a few percent); the budget leaves room for that and none for a
task more per service (~3 KiB) or two full copies of the environment.
"""

from __future__ import annotations

import gc
import shutil
import tracemalloc
from pathlib import Path

import anyio
import pytest

from supervisor.engine.engine import Engine
from supervisor.engine.states import ServiceState, StackState
from supervisor.plan.pipeline import PlanRequest, load_plan
from supervisor.proc.reaper import Reaper

SLEEP = shutil.which("sleep")
# bytes of Python memory per idle running service: 12.5 KiB measured with the output read by a loop callback,
# 18.1 KiB with it read by a task of its own (engine/lifetime.py: the callback measured 20-25 % slower on the
# 94 MB burst, so the task stays); one more task per service (~3 KiB) breaks the budget
BUDGET = 20 * 1024

pytestmark = pytest.mark.skipif(SLEEP is None, reason="needs the sleep program")


def make_stack(root: Path, n: int) -> Path:
    (root / "services.d").mkdir(parents=True)
    (root / "qasup.toml").write_text('[stack]\nname = "mem"\necho = false\n')
    for i in range(n):
        (root / "services.d" / f"s{i:03d}.toml").write_text(f'command = ["{SLEEP}", "3600"]\n[stop]\ntimeout = "2s"\n')
    return root


async def held_when_idle(root: Path, n: int) -> int:
    """Bytes allocated since the engine was made and still held once all ``n`` services are ready."""
    plan = load_plan(PlanRequest(cwd=make_stack(root, n), environ={"PATH": "/usr/bin:/bin"}))
    held = -1
    async with Reaper.open() as reaper:
        gc.collect()
        tracemalloc.start(1)
        try:
            engine = Engine(plan, reaper, echo=None, say=lambda text: None)
            async with anyio.create_task_group() as tg:
                async def run() -> None:
                    await engine.run()

                tg.start_soon(run)
                with anyio.fail_after(20):
                    while not (engine.ready_once and engine.stack_state() == StackState.READY):
                        await engine.changed.wait()
                await anyio.sleep(0.05)   # what follows ready (the progress task's last line) settles
                gc.collect()
                held = tracemalloc.get_traced_memory()[0]
                assert all(s.state == ServiceState.READY and s.host.live_pid(s.inst) for s in engine.services.values()
                           if s.inst is not None)
                engine.begin_shutdown("test over")
        finally:
            tracemalloc.stop()
    assert all(s.state == ServiceState.STOPPED for s in engine.services.values())
    return held


def test_an_idle_service_costs_less_than_the_budget(tmp_path):
    anyio.run(held_when_idle, tmp_path / "warm", 2)   # first-use costs (lazy imports, caches) out of the way
    small, large = 10, 40
    a = anyio.run(held_when_idle, tmp_path / "a", small)
    b = anyio.run(held_when_idle, tmp_path / "b", large)
    per_service = (b - a) / (large - small)
    assert 0 < per_service <= BUDGET, f"{per_service / 1024:.1f} KiB per idle service (budget {BUDGET / 1024:g} KiB)"
