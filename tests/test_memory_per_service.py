"""What an idle service costs the daemon: Python memory per running service, measured in-process; and that
what saves it changes nothing a service sees.

A stack of idle ``sleep`` services is run by the real engine (real processes, pipes, reaper) under
``tracemalloc``; the memory still held once every service is ready and its run parked (no task of its own once
its output was quiet for ``QUIET_AFTER``), between two stack sizes, divided by the difference, is the cost of
one more service (the fixed costs cancel). Allocation sizes do not depend on timing, so the number is stable run
to run (within a few percent); the budget leaves room for that and none for a task more per service (~3.3 KiB)
or two full copies of the environment.

What a parked run must still do: capture what the service writes later (and park again), and report its exit;
what the shared environment must still give: the same variables in the same order as a full copy.
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from supervisor.engine.engine import Engine
from supervisor.engine.states import ServiceState, StackState
from supervisor.plan.pipeline import PlanRequest, load_plan
from supervisor.plan.resolve import UnitEnv
from supervisor.proc.guardian import DAEMON_VARIABLE
from supervisor.proc.proctable import TAG_VARIABLE
from supervisor.proc.reaper import Reaper

SLEEP = shutil.which("sleep")
# bytes of Python memory per idle running service: 4.8 KiB measured with a quiet run parked (no task, no task
# group, the environment shared; engine/lifetime.py); 18.1 KiB before, with a run task and a capture task per
# service and a full environment per unit. One more task per service (~3.3 KiB) breaks the budget.
BUDGET = 7 * 1024

pytestmark = pytest.mark.skipif(SLEEP is None, reason="needs the sleep program")


def parked(svc) -> bool:
    """Whether no task waits for the service's run (its output quiet for QUIET_AFTER; engine.lifetime)."""
    run = getattr(svc.host, "run", None)
    return run is not None and run.parked


async def until(pred, what: str, timeout: float = 10.0) -> None:
    """Poll ``pred`` until it holds; fails after ``timeout`` seconds, naming ``what`` it waited for."""
    with anyio.move_on_after(timeout):
        while not pred():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"{what}: not within {timeout:g}s")


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
                await until(lambda: all(parked(s) for s in engine.services.values()), "every run parked")
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


@asynccontextmanager
async def running(root: Path, environ: dict[str, str]) -> AsyncIterator[Engine]:
    """The engine on the stack in ``root``, running until the block ends (then shut down in order)."""
    plan = load_plan(PlanRequest(cwd=root, environ=environ))
    async with Reaper.open() as reaper:
        engine = Engine(plan, reaper, echo=None, say=lambda text: None)
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            try:
                yield engine
            finally:
                engine.begin_shutdown("test over")


def test_a_parked_run_captures_later_output_parks_again_and_reports_its_exit(tmp_path):
    fifos = [tmp_path / "one.fifo", tmp_path / "two.fifo"]   # one each: a reopened FIFO could see the last writer
    for f in fifos:
        os.mkfifo(f)
    root = tmp_path / "stack"
    (root / "services.d").mkdir(parents=True)
    (root / "qasup.toml").write_text('[stack]\nname = "park"\necho = false\n')
    script = 'read a < "$0"; echo "got $a"; read b < "$1"; echo "bye $b"; exit 3'
    (root / "services.d" / "late.toml").write_text(
        f'command = {json.dumps(["/bin/sh", "-c", script, *map(str, fifos)])}\n[restart]\npolicy = "never"\n')
    log = root / "logs" / "late.log"

    def say(fifo: Path, word: str) -> None:
        with open(fifo, "w") as f:   # opens once the service waits in its `read`
            f.write(word + "\n")

    async def main() -> None:
        async with running(root, {"PATH": "/usr/bin:/bin"}) as engine:
            svc = engine.services["late"]
            await until(lambda: parked(svc), "the quiet run parked")
            await anyio.to_thread.run_sync(say, fifos[0], "one")
            await until(lambda: log.exists() and b"got one\n" in log.read_bytes(), "the output after parking logged")
            await until(lambda: parked(svc), "parked again once quiet")
            assert svc.state == ServiceState.READY and svc.host.live_pid(svc.inst) is not None
            await anyio.to_thread.run_sync(say, fifos[1], "two")
            await until(lambda: svc.inst is None and svc.exit_code is not None, "the exit reported")
            assert svc.exit_code == 3 and svc.state == ServiceState.FAILED
            assert log.read_bytes() == b"got one\nbye two\n"

    anyio.run(main)


def test_the_shared_environment_is_a_full_copy_variable_for_variable_and_in_order(tmp_path):
    rng = random.Random(16)
    for _ in range(200):   # UnitEnv(base, own) is {**base, **own}: items, order, length, lookups, equality
        base = {f"K{rng.randrange(30)}": str(rng.random()) for _ in range(rng.randrange(20))}
        own = {f"K{rng.randrange(30)}": str(rng.random()) for _ in range(rng.randrange(8))}
        env, full = UnitEnv(base, own), {**base, **own}
        assert list(env.items()) == list(full.items()) and len(env) == len(full) and env == full
        assert all(env[k] == v and k in env for k, v in full.items()) and "absent" not in env
        assert {**env, "X": "1"} == {**full, "X": "1"} and list({**env, "X": "1"}) == list({**full, "X": "1"})
    # what a spawned service gets: the daemon's environment, the unit's own over it, then qasup's variables
    root = make_stack(tmp_path / "env", 1)
    (root / "services.d" / "s000.toml").write_text(
        f'command = ["{SLEEP}", "3600"]\nenv = {{ B = "2", PATH = "/bin:/usr/bin" }}\n')
    environ = {"PATH": "/usr/bin:/bin", "A": "1", "QASUP_SERVICE": "outer", "Z": "z"}

    async def main() -> list[tuple[str, str]]:
        async with running(root, environ) as engine:
            svc = engine.services["s000"]
            await until(lambda: svc.state == ServiceState.READY, "ready")
            pid = svc.host.live_pid(svc.inst)
            raw = Path(f"/proc/{pid}/environ").read_bytes()
            expected = {**engine.environ, "B": "2", "PATH": "/bin:/usr/bin", "QASUP_SERVICE": "s000",
                        DAEMON_VARIABLE: engine.daemon_id}
            got = [tuple(kv.split("=", 1)) for kv in raw.decode().split("\0") if kv]
            assert [kv for kv in got if kv[0] != TAG_VARIABLE] == [kv for kv in expected.items() if kv[0] != TAG_VARIABLE]
            return got

    got = anyio.run(main)
    assert [k for k, _ in got].count(TAG_VARIABLE) == 1
