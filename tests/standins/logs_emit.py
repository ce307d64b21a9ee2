"""Stand-in service for the log tests: writes known bytes to its stdout and stderr.

    logs_emit.py file PATH SEED   the bytes of PATH, in random-sized writes alternating between
                                  fd 1 and fd 2 (one pipe behind both, so order is kept)
    logs_emit.py lines N          N numbered lines "line 000001 ...\\n", as fast as possible
    logs_emit.py long N           N bytes of "x" without a newline, then "MARKER" (no newline)
    logs_emit.py split            "ERR", a pause, "OR happened\\n": one line in two writes
    logs_emit.py mark             after 0.2 s, "MARK <CLOCK_MONOTONIC seconds>\\n", then 0.2 s more
"""

import os
import random
import sys
import time


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main() -> None:
    mode = sys.argv[1]
    if mode == "file":
        data = open(sys.argv[2], "rb").read()
        rng = random.Random(int(sys.argv[3]))
        pos = 0
        while pos < len(data):
            size = rng.choice((1, 7, 100, 4096, 65536, 200_000))
            write_all(rng.choice((1, 2)), data[pos:pos + size])
            pos += size
    elif mode == "lines":
        count = int(sys.argv[2])
        batch = []
        for i in range(1, count + 1):
            batch.append(b"line %06d the quick brown fox jumps over the lazy dog\n" % i)
            if len(batch) == 500:
                write_all(1, b"".join(batch))
                batch.clear()
        write_all(1, b"".join(batch))
    elif mode == "long":
        size = int(sys.argv[2])
        block = b"x" * (1 << 20)
        left = size
        while left:
            step = min(left, len(block))
            write_all(1, block[:step])
            left -= step
        write_all(2, b"MARKER")
    elif mode == "split":
        write_all(1, b"first line\nERR")
        time.sleep(0.15)
        write_all(2, b"OR happened\nlast line\n")
    elif mode == "mark":
        time.sleep(0.2)
        write_all(1, b"MARK %.6f\n" % time.monotonic())
        time.sleep(0.2)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
