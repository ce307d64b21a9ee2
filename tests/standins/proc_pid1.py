"""Stand-in: qasup as PID 1 (run under `unshare --pid --fork --mount-proc`).

  storm N    spawn proc_storm.py (N orphans, exit 7) and proc_exit.py 7 side by side; print
             {"pid": os.getpid(), "codes": [...], "orphans": reaper.orphans_reaped} once all N
             orphans are reaped, exit 0
  sigterm    spawn proc_sleep.py, print {"pid": ..., "ready": true}; on SIGTERM (no default action
             applies to PID 1: the handler must be ours) stop the service, print {"stopped": code},
             exit 0
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import anyio

from supervisor.proc.reaper import Reaper
from supervisor.proc.stop import terminate

HERE = Path(__file__).resolve().parent


def say(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


async def storm(reaper: Reaper, count: int) -> None:
    env = dict(os.environ)
    storm = reaper.spawn([sys.executable, str(HERE / "proc_storm.py"), str(count), "7"], cwd=HERE, env=env,
                         stdout=None, stderr=None, tag="storm")
    quick = reaper.spawn([sys.executable, str(HERE / "proc_exit.py"), "7"], cwd=HERE, env=env,
                         stdout=None, stderr=None, tag="quick")
    codes = [await storm.wait(), await quick.wait()]
    deadline = time.monotonic() + 10
    while reaper.orphans_reaped < count and time.monotonic() < deadline:
        await anyio.sleep(0.01)
    say({"pid": os.getpid(), "codes": codes, "orphans": reaper.orphans_reaped})


async def sigterm(reaper: Reaper) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        service = reaper.spawn([sys.executable, str(HERE / "proc_sleep.py")], cwd=HERE, env=dict(os.environ),
                               stdout=None, stderr=None, tag="sleeper")
        say({"pid": os.getpid(), "ready": True})
        async for _ in signals:
            break
    say({"stopped": await terminate(service, signal.SIGTERM, 2.0)})


async def main() -> None:
    async with Reaper.open() as reaper:
        if sys.argv[1] == "storm":
            await storm(reaper, int(sys.argv[2]))
        else:
            await sigterm(reaper)


anyio.run(main)
