"""The floor for scenario 2 (log marker to ready): the least a Python supervisor on asyncio can do with the same
churn. Standard library only; run as ``python -I -S markerfloor.py N SECONDS ARGV...``.

It keeps N copies of the stand-in (``ARGV``: ``standin.py flap ...``) running, each restarted as soon as it
exits (spawned from a worker thread, like qasup's spawns, so the loop never waits for a fork), reads their
output with ``add_reader`` on one event loop and, for each ``READY pid=PID ts=TS`` line, takes ``time.time()``
at once: no unit, no scanning engine, no state machine, no event file. It prints one latency in milliseconds
per line on stdout at the end. What qasup adds is the difference between its latency and this one; what this
one measures is the machine (a wake-up of the reading process, the CPUs the stand-ins' start-ups take).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time


async def keep(argv: list[str], until: float, out: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        r, w = os.pipe()
        os.set_blocking(r, False)
        proc = await loop.run_in_executor(None, lambda: subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.STDOUT, start_new_session=True))
        os.close(w)
        done: asyncio.Future[None] = loop.create_future()
        pending = b""

        def readable() -> None:
            nonlocal pending
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                return
            now = time.time()
            if not chunk:
                loop.remove_reader(r)
                if not done.done():
                    done.set_result(None)
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"READY pid="):
                    ts = float(line.rsplit(b"ts=", 1)[1])
                    out.append((now - ts) * 1000)

        loop.add_reader(r, readable)
        await done
        os.close(r)
        await loop.run_in_executor(None, proc.wait)


async def main(argv: list[str]) -> int:
    n, seconds, child = int(argv[0]), float(argv[1]), argv[2:]
    out: list[float] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(keep(child, until, out) for _ in range(n)))
    sys.stdout.write("".join(f"{v:.4f}\n" for v in out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
