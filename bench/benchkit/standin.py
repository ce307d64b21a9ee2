"""Stand-in programs for the benchmarks (standard library only; run with ``python -I -S``).

    flap MIN MAX LIVE   sleep a random MIN..MAX seconds, print ``READY pid=PID ts=TIME`` (TIME is
                        ``time.time()`` taken just before the write), live LIVE seconds more, exit 1
    gate FIFO FILE      block until a byte arrives on FIFO, then exec ``cat FILE`` (the burst starts
                        when the harness says so, not when the supervisor happens to spawn it)
"""

from __future__ import annotations

import os
import random
import sys
import time


def flap(lo: float, hi: float, live: float) -> int:
    time.sleep(random.uniform(lo, hi))
    line = f"READY pid={os.getpid()} ts={time.time():.6f}\n".encode()
    os.write(1, line)
    time.sleep(live)
    return 1


def gate(fifo: str, file: str) -> int:
    with open(fifo, "rb") as f:
        f.read(1)
    os.execvp("cat", ["cat", file])
    return 127  # pragma: no cover - exec does not return


def main(argv: list[str]) -> int:
    if argv[:1] == ["flap"] and len(argv) == 4:
        return flap(float(argv[1]), float(argv[2]), float(argv[3]))
    if argv[:1] == ["gate"] and len(argv) == 3:
        return gate(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
