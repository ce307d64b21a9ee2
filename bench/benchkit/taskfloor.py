"""A floor for qasup's memory per service: an anyio program that holds, per "service", one pipe and
TASKS tasks as qasup's engine does (one waiting for the pipe to be readable, as a capture task does, one
waiting on an event, as an instance's run task waits for the exit), and prints its VmRSS in KiB.

    python taskfloor.py N TASKS     (TASKS: 0, 1 or 2)

Scenario 6 runs it at its smallest and largest sizes: the RSS slope is what one more anyio task costs.
"""

from __future__ import annotations

import os
import resource
import sys

import anyio


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def main(n: int, tasks: int) -> None:
    keep = []
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            r, w = os.pipe()
            event = anyio.Event()
            keep.append((r, w, event))
            if tasks >= 1:
                tg.start_soon(anyio.wait_readable, r)
            if tasks >= 2:
                tg.start_soon(event.wait)
        await anyio.sleep(0.3)
        print(rss_kib(), flush=True)
        tg.cancel_scope.cancel()
    for r, w, _ in keep:
        os.close(r)
        os.close(w)


if __name__ == "__main__":
    count, per = int(sys.argv[1]), int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * count + 64 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    anyio.run(main, count, per)
