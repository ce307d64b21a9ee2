"""Stand-in: a tiny qasup. Opens a Reaper, spawns proc_sleep.py and prints {"child": pid} once the
child runs, then idles until killed. With --no-pdeathsig the child is spawned without PDEATHSIG.
"""

import json
import os
import sys
from pathlib import Path

import anyio

from supervisor.proc.reaper import Reaper

HERE = Path(__file__).resolve().parent


async def main() -> None:
    async with Reaper.open() as reaper:
        child = reaper.spawn(
            [sys.executable, str(HERE / "proc_sleep.py")],
            cwd=HERE,
            env=dict(os.environ),
            stdout=None,
            stderr=None,
            tag="sleeper",
            pdeathsig="--no-pdeathsig" not in sys.argv,
        )
        print(json.dumps({"child": child.pid}), flush=True)
        await anyio.sleep_forever()


anyio.run(main)
