r"""Throughput sanity check of the log pipeline.

A 94 MB burst (1 M lines of 94 bytes) is produced by `cat` of a file into a pipe from
`supervisor.logs.capture.make_pipe`, and captured with `capture()` into a `RotatingFile` (50 MiB x 5, as in
the spec's example, so rotation happens during the burst) while a `LineScanner` scans it for 10
patterns.  Prints the seconds from spawning `cat` until the last byte is in the log, next to
`cat FILE | cat > OUT` (the limit for any capturer).  supervisord takes 0.07-0.28 s on the
reference machine (spec/peers.md).

    python bench/logs_throughput.py [--lines 1000000] [--engine auto|re2|hyperscan] [--echo] [--extra PATTERN]

`--engine re2` scans every pattern with RE2 (as on a machine without Hyperscan); `--extra PATTERN` (repeatable)
adds a pattern to the 10, e.g. one Hyperscan cannot take (`ERROR$|^FATAL`, a `$` before the end; `^\s*$`, which
can match an empty line), so that it is scanned with RE2 next to Hyperscan, or one that matches every line of
the burst (`status=200`) to measure the per-match cost.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from supervisor.logs.capture import capture, make_pipe
from supervisor.logs.echo import Echo
from supervisor.logs.rotate import RotatingFile
from supervisor.logs.scan import LineScanner, PatternSet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.daemons import RULE_PATTERNS  # noqa: E402

PATTERNS = RULE_PATTERNS   # the same 10 rules the side-by-side benchmark (bench/run.py) scans


def make_input(path: Path, lines: int) -> None:
    line = (b"2026-01-01 12:00:00,000 INFO worker.py:123 request handled in 12.3 ms status=200 id=" +
            b"x" * 9)[:93] + b"\n"
    assert len(line) == 94
    block = line * 10_000
    with open(path, "wb") as out:
        for _ in range(lines // 10_000):
            out.write(block)
        out.write(line * (lines % 10_000))


def run_capture(source: Path, log: Path, engine: str, echo: bool, extra: list[str]) -> tuple[float, int, int]:
    patterns = PatternSet([*PATTERNS, *extra], engine=engine)
    matches: list[int] = []
    scanner = LineScanner(patterns, lambda i, line, ctx: matches.append(i))
    rotating = RotatingFile(log, 50 << 20, 5, print)
    sinks = [rotating.write, scanner.feed]
    echo_hub = None
    if echo:
        devnull = os.open(os.devnull, os.O_WRONLY)
        echo_hub = Echo(devnull)
        stream = echo_hub.line_writer("bench")
        sinks.append(stream.write)

    async def main() -> tuple[float, int]:
        read_fd, write_fd = make_pipe()
        start = time.perf_counter()
        proc = subprocess.Popen(["cat", str(source)], stdout=write_fd, close_fds=True)
        os.close(write_fd)
        total = await capture(read_fd, sinks, on_eof=[scanner.flush])
        elapsed = time.perf_counter() - start
        proc.wait()
        return elapsed, total

    elapsed, total = anyio.run(main)
    rotating.close()
    if echo_hub is not None:
        echo_hub.close()
    print(f"engine={patterns.engine} fallback={patterns.fallback} matches={len(matches)}", file=sys.stderr)
    return elapsed, total, len(matches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--engine", default="auto", choices=["auto", "re2", "hyperscan"])
    parser.add_argument("--extra", action="append", default=[], metavar="PATTERN",
                        help="one more pattern to scan for (repeatable)")
    parser.add_argument("--echo", action="store_true", help="also echo to /dev/null")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (e.g. /dev/shm to leave the disk out)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        source = Path(tmp) / "burst.txt"
        make_input(source, args.lines)
        size = source.stat().st_size
        out = Path(tmp) / "cat.out"
        start = time.perf_counter()
        subprocess.run(f"cat {source} | cat > {out}", shell=True, check=True)
        baseline = time.perf_counter() - start
        print(f"input: {size / 1e6:.1f} MB; cat | cat > file: {baseline:.3f} s")
        for attempt in range(args.repeat):
            start = time.perf_counter()
            subprocess.run(f"cat {source} | cat > {out}", shell=True, check=True)
            print(f"  cat | cat > file, now: {time.perf_counter() - start:.3f} s")
            logdir = Path(tmp) / f"logs{attempt}"
            elapsed, total, _ = run_capture(source, logdir / "bench.log", args.engine, args.echo, args.extra)
            logged = sum(p.stat().st_size for p in logdir.iterdir())
            assert total == size == logged, (total, size, logged)
            print(f"capture+RotatingFile+{len(PATTERNS) + len(args.extra)} patterns "
                  f"({args.engine}{', echo' if args.echo else ''}): "
                  f"{elapsed:.3f} s ({size / elapsed / 1e9:.2f} GB/s)")


if __name__ == "__main__":
    main()
