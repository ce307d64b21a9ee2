"""Tests of the log pipeline (supervisor/logs/, supervisor/config/patterns.py) with real pipes, real
child processes writing to them, and real files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.config.patterns import PatternError, compile_line_pattern
from supervisor.logs.capture import capture, make_pipe
from supervisor.logs.echo import Echo
from supervisor.logs.follow import follow
from supervisor.logs.rotate import LogError, RotatingFile
from supervisor.logs.scan import LineScanner, PatternSet
from supervisor.logs.tail import tail_lines

EMIT = Path(__file__).parent / "standins" / "logs_emit.py"
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

try:
    import hyperscan  # noqa: F401

    HAVE_HYPERSCAN = True
except ImportError:
    HAVE_HYPERSCAN = False


# ---------------------------------------------------------------------------------------------
# helpers


def run_captured(args: Sequence[str], sinks: Sequence[Callable[[bytes], None]],
                 on_eof: Sequence[Callable[[], None]] = ()) -> int:
    """Run the stand-in with stdout and stderr on one make_pipe() pipe; capture until EOF."""

    async def main() -> int:
        read_fd, write_fd = make_pipe()
        proc = subprocess.Popen([sys.executable, str(EMIT), *args], stdout=write_fd, stderr=write_fd)
        os.close(write_fd)
        try:
            return await capture(read_fd, sinks, on_eof=on_eof)
        finally:
            assert proc.wait(timeout=30) == 0

    return anyio.run(main)


def reference_hits(patterns: Sequence[str], data: bytes) -> list[tuple[int, bytes]]:
    """What a line-by-line `re.search` finds: (pattern id, line) in stream order."""
    compiled = [re.compile(p.encode()) for p in patterns]
    lines = data.split(b"\n") if data else []
    if data.endswith(b"\n"):
        lines.pop()
    return [(i, line) for line in lines for i, rx in enumerate(compiled) if rx.search(line)]


def collect_scanner(patterns: PatternSet, context: int = 2, max_line: int = 65536
                    ) -> tuple[LineScanner, list[tuple[int, bytes, list[bytes]]]]:
    found: list[tuple[int, bytes, list[bytes]]] = []
    scanner = LineScanner(patterns, lambda i, line, ctx: found.append((i, line, ctx)), context, max_line)
    return scanner, found


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


async def await_until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll with a deadline; returns the seconds it took (fails the test on time-out)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await anyio.sleep(0.001)
    return time.monotonic() - start


# ---------------------------------------------------------------------------------------------
# pipes and capture


def test_make_pipe_is_cloexec_enlarged_and_nonblocking() -> None:
    read_fd, write_fd = make_pipe()
    try:
        assert fcntl.fcntl(read_fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fcntl.fcntl(write_fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert not os.get_blocking(read_fd)
        assert os.get_blocking(write_fd)
        assert fcntl.fcntl(write_fd, F_GETPIPE_SZ) >= 1 << 20
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_capture_is_byte_identical_for_random_binary(tmp_path: Path) -> None:
    rng = random.Random(7)
    parts = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(400)]
    parts += [b"\xff\xfe invalid utf-8 \xc3\x28\n", b"\r\n", b"\x00" * 100, b"\n" * 50]
    parts += [b"y" * 300_000 + b"\n"]  # longer than any read buffer of the stand-in
    rng.shuffle(parts)
    data = b"".join(parts)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    log = RotatingFile(tmp_path / "logs" / "svc.log", 0, 0)
    patterns = PatternSet([r"invalid utf-8", r"\x00{100}"])
    scanner, found = collect_scanner(patterns)
    echoed: list[bytes] = []
    total = run_captured(["file", str(source), "3"], [log.write, scanner.feed, echoed.append],
                         on_eof=[scanner.flush])
    log.close()
    assert total == len(data)
    assert (tmp_path / "logs" / "svc.log").read_bytes() == data
    assert b"".join(echoed) == data
    assert [(i, line) for i, line, _ in found] == reference_hits(patterns.patterns, data)


def test_capture_50mb_line_without_newline_uses_bounded_memory(tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    log = RotatingFile(tmp_path / "svc.log", 0, 0)
    scanner, found = collect_scanner(PatternSet(["MARKER", "y"]), max_line=65536)
    total = run_captured(["long", str(size)], [log.write, scanner.feed], on_eof=[scanner.flush])
    log.close()
    assert total == size + len(b"MARKER")
    assert scanner.max_buffered < 65536
    assert scanner.buffered == 0
    assert [(i, line) for i, line, _ in found] == [(0, b"MARKER")]
    written = tmp_path / "svc.log"
    assert written.stat().st_size == total
    with open(written, "rb") as f:
        f.seek(size - 10)
        assert f.read() == b"x" * 10 + b"MARKER"


def test_capture_keeps_last_lines_of_a_fast_exiting_process(tmp_path: Path) -> None:
    lines: list[bytes] = []
    run_captured(["lines", "20000"], [lines.append])
    data = b"".join(lines)
    assert data.count(b"\n") == 20000
    assert data.endswith(b"line 020000 the quick brown fox jumps over the lazy dog\n")


def test_pattern_split_across_reads_is_found_through_a_real_pipe() -> None:
    chunks: list[bytes] = []
    scanner, found = collect_scanner(PatternSet(["ERROR happened", "^last"]), context=1)
    run_captured(["split"], [chunks.append, scanner.feed], on_eof=[scanner.flush])
    assert len(chunks) >= 2  # the line really arrived in two reads
    assert found == [(0, b"ERROR happened", [b"first line"]), (1, b"last line", [b"ERROR happened"])]


def test_marker_reaches_callback_quickly() -> None:
    seen: list[float] = []

    def on_match(_i: int, line: bytes, _ctx: list[bytes]) -> None:
        seen.append(time.monotonic() - float(line.split()[1]))

    scanner = LineScanner(PatternSet([r"^MARK "]), on_match)
    run_captured(["mark"], [scanner.feed])
    assert len(seen) == 1
    assert seen[0] < 0.05, f"marker took {seen[0] * 1000:.1f} ms"


def test_a_failing_sink_is_dropped_and_the_pipe_still_drained(tmp_path: Path) -> None:
    errors: list[Exception] = []
    good: list[bytes] = []

    def bad(_chunk: bytes) -> None:
        raise RuntimeError("boom")

    async def main() -> int:
        read_fd, write_fd = make_pipe()
        proc = subprocess.Popen([sys.executable, str(EMIT), "lines", "50000"], stdout=write_fd)
        os.close(write_fd)
        total = await capture(read_fd, [bad, good.append], on_sink_error=lambda s, e: errors.append(e))
        assert proc.wait(timeout=30) == 0
        return total

    total = anyio.run(main)
    assert len(errors) == 1 and str(errors[0]) == "boom"
    assert total == len(b"".join(good)) and b"".join(good).count(b"\n") == 50000


# ---------------------------------------------------------------------------------------------
# pattern scanning


def test_every_split_point_of_a_chunk_finds_the_same_matches() -> None:
    data = b"alpha\nbeta ERROR one\ngamma\n\ndelta ERROR two\nepsilon end\nzeta"
    patterns = PatternSet([r"ERROR \w+", r"end$", r"^$", r"^zeta"])
    expected = reference_hits(patterns.patterns, data)
    for cut in range(len(data) + 1):
        for cut2 in (cut, min(len(data), cut + 3)):
            scanner, found = collect_scanner(patterns)
            scanner.feed(data[:cut])
            scanner.feed(data[cut:cut2])
            scanner.feed(data[cut2:])
            scanner.flush()
            assert [(i, line) for i, line, _ in found] == expected, (cut, cut2)


def test_context_lines_come_from_earlier_chunks() -> None:
    scanner, found = collect_scanner(PatternSet(["BOOM"]), context=3)
    scanner.feed(b"one\ntwo\nthr")
    scanner.feed(b"ee\n")
    scanner.feed(b"four\nBOOM here\nafter\n")
    scanner.feed(b"BOOM again\n")
    assert found == [
        (0, b"BOOM here", [b"two", b"three", b"four"]),
        (0, b"BOOM again", [b"four", b"BOOM here", b"after"]),
    ]
    scanner, found = collect_scanner(PatternSet(["BOOM"]), context=5)
    scanner.feed(b"a\nBOOM\n")
    assert found == [(0, b"BOOM", [b"a"])]


def test_each_pattern_line_pair_is_reported_once() -> None:
    patterns = PatternSet([r"a", r"a+", r"a{,3}a"])  # many end offsets per line for each (the last: RE2)
    scanner, found = collect_scanner(patterns)
    scanner.feed(b"aaaaaaaa\nbbb\naa aa\n")
    assert [(i, line) for i, line, _ in found] == [
        (0, b"aaaaaaaa"), (1, b"aaaaaaaa"), (2, b"aaaaaaaa"), (0, b"aa aa"), (1, b"aa aa"), (2, b"aa aa")]


def test_patterns_hyperscan_cannot_take_fall_back_to_re2() -> None:
    # Back-references, lookaround and atomic groups, which used to fall back to Python `re`, are now
    # refused (tests/test_patterns_safety.py): what falls back is what Hyperscan would read differently.
    patterns = PatternSet([r"plain", r"(the|a) (the|a)$|^y", r"(?:^|[^x])foo", r"^$", r"a{,2}b", r"(?:ab)c"])
    if HAVE_HYPERSCAN:
        assert patterns.engine == "hyperscan"
        assert patterns.fallback == (1, 3, 4)
        assert PatternSet([r"ok$", r"(a$|b)"]).fallback == (1,)
        assert "'$' before the end" in patterns.fallback_reasons[1]
        assert "empty string" in patterns.fallback_reasons[3]
    else:
        assert patterns.engine == "re2"
    data = b"plain text\nthe the\nxfoo\n\nb\nyfoo\nabc\n"
    scanner, found = collect_scanner(patterns)
    scanner.feed(data)
    assert [(i, line) for i, line, _ in found] == reference_hits(patterns.patterns, data)
    assert (3, b"") in [(i, line) for i, line, _ in found]
    assert (1, b"the the") in [(i, line) for i, line, _ in found]


def test_no_patterns_means_no_work() -> None:
    patterns = PatternSet([])
    assert patterns.engine == "none"
    scanner, found = collect_scanner(patterns)
    scanner.feed(b"x" * 1_000_000)
    assert scanner.buffered == 0 and not found


def test_bad_pattern_gives_a_readable_error() -> None:
    with pytest.raises(PatternError, match=r"bad log pattern .*u00e9.*bad escape.*write the character itself"):
        compile_line_pattern(r"\u00e9t\u00e9")
    assert compile_line_pattern("été").search("un été chaud".encode())


def test_a_pattern_never_matches_across_lines() -> None:
    patterns = PatternSet([r"a\s+b", r"(?s)x.*y", r"c\Z"])
    scanner, found = collect_scanner(patterns)
    scanner.feed(b"a\nb\nx\ny\na  b\nabc\ncc\n")
    assert [(i, line) for i, line, _ in found] == [(0, b"a  b"), (2, b"abc"), (2, b"cc")]


def test_matches_hyperscan_5_4_misses_near_dollar_and_buffer_end_are_found() -> None:
    # Found by differential testing: Hyperscan 5.4 (PyPI wheel) drops these in multi-pattern
    # databases; PatternSet pads the buffer and rewrites or re-routes `$` to compensate.
    cases = [
        ([r"b$", r"zz"], b"c" * 20 + b"b\n"),
        ([r"xb$", r"zz"], b"1234567890123456Exb"),
        ([r"^a", r"zz"], b"E\tE\ta\txxb  x xx1\t\na"),
        ([r"[^a]b$", r"b$", r"^\W"], b"\tRE \nR\txx\tRxO\t E aOaxO\t\xffRb\n"),
        ([r"a$|b$", r"(b$)", r"zz"], b"x" * 30 + b"\nab\nba\n"),
        ([r"a{,1}a$", r"ok$"], b"aa\nok\naa"),  # RE2 fallback keeps `$` for an unterminated line
    ]
    for chosen, data in cases:
        patterns = PatternSet(chosen)
        found = [(i, data[a:b]) for i, a, b in patterns.scan(data)]
        assert found == reference_hits(chosen, data), (chosen, data)
        scanner, got = collect_scanner(patterns)
        scanner.feed(data)
        scanner.flush()
        assert [(i, line) for i, line, _ in got] == found


LINE_ALPHABET = st.sampled_from([b"a", b"b", b"x", b" ", b"\xff", b"E", b"R", b"O", b"\t", b"1"])
HYPOTHESIS_PATTERNS = [
    r"ab", r"^a", r"b$", r"ERR?OR", r"\bx\b", r"a.*b", r"[0-9]+ ?x", r"(?i)err", r"^\s*$", r"(aa|bb)+",
    r"\xff+a", r"(?:^|[^a])b", r"x{2,}", r"a{,1}x", r"[^a]b$", r"xb$", r"\W$", r"a$|b$", r"E[^x]*O",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.lists(LINE_ALPHABET, max_size=12).map(b"".join), max_size=30),
    chosen=st.lists(st.sampled_from(HYPOTHESIS_PATTERNS), min_size=1, max_size=7, unique=True),
    final_newline=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4),
)
def test_hyperscan_and_re2_find_what_line_by_line_re_finds(
        lines: list[bytes], chosen: list[str], final_newline: bool, cuts: list[int]) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    expected = reference_hits(chosen, data)
    engines = ["re2", "auto"] if HAVE_HYPERSCAN else ["re2"]
    for engine in engines:
        patterns = PatternSet(chosen, engine=engine)
        scanner, found = collect_scanner(patterns, max_line=1 << 20)
        points = sorted({min(c, len(data)) for c in cuts})
        previous = 0
        for point in [*points, len(data)]:
            scanner.feed(data[previous:point])
            previous = point
        scanner.flush()
        assert [(i, line) for i, line, _ in found] == expected, engine


# ---------------------------------------------------------------------------------------------
# rotation


def test_rotation_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "svc.log"
    problems: list[str] = []
    log = RotatingFile(path, 64 * 1024, 1000, problems.append)
    total = run_captured(["lines", "60000"], [log.write])
    log.close()
    backups = sorted(tmp_path.joinpath("logs").glob("svc.log.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(backups) > 40
    joined = b"".join(p.read_bytes() for p in [*backups, path])
    assert len(joined) == total
    expected = b"".join(b"line %06d the quick brown fox jumps over the lazy dog\n" % i for i in range(1, 60001))
    assert joined == expected
    for p in backups:
        size = p.stat().st_size
        assert 60 * 1024 < size <= 64 * 1024
        assert p.read_bytes().endswith(b"\n")  # cut at a line boundary
    assert not problems


def test_rotation_keeps_only_the_given_number_of_backups(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    log = RotatingFile(path, 100, 3)
    for i in range(50):
        log.write(b"%02d-456789\n" % i)  # 10 lines per file
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svc.log", "svc.log.1", "svc.log.2", "svc.log.3"]
    assert path.read_bytes() == b"".join(b"%02d-456789\n" % i for i in range(40, 50))
    assert (tmp_path / "svc.log.3").read_bytes().startswith(b"10-")
    # a line longer than max_bytes is kept whole, in a file of its own (tests/test_log_files.py has more)
    log = RotatingFile(tmp_path / "long.log", 100, 5)
    log.write(b"z" * 250 + b"\n")
    log.close()
    assert (tmp_path / "long.log").read_bytes() == b"z" * 250 + b"\n"
    assert not (tmp_path / "long.log.1").exists()


def test_zero_backups_truncates_and_zero_max_bytes_never_rotates(tmp_path: Path) -> None:
    log = RotatingFile(tmp_path / "a.log", 100, 0)
    for _ in range(30):
        log.write(b"123456789\n")
    log.close()
    assert (tmp_path / "a.log").stat().st_size <= 100
    assert [p.name for p in tmp_path.iterdir()] == ["a.log"]
    log = RotatingFile(tmp_path / "b.log", 0, 5)
    log.write(b"x" * 1_000_000)
    log.close()
    assert (tmp_path / "b.log").stat().st_size == 1_000_000
    assert not (tmp_path / "b.log.1").exists()


def test_existing_log_is_appended_to_and_rotated_when_full(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"old\n" * 30)
    log = RotatingFile(path, 100, 2)
    log.write(b"new\n")
    log.close()
    assert (tmp_path / "a.log.1").read_bytes() == b"old\n" * 30
    assert path.read_bytes() == b"new\n"


def test_unwritable_log_folder_raises_log_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LogError, match=r"cannot create log folder .*file/sub"):
        RotatingFile(blocker / "sub" / "svc.log", 0, 0)
    (tmp_path / "dir.log").mkdir()
    with pytest.raises(LogError, match=r"cannot open log file .*dir\.log: Is a directory"):
        RotatingFile(tmp_path / "dir.log", 0, 0)
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(LogError, match="Permission denied"):
            RotatingFile(locked / "logs" / "svc.log", 0, 0)


def test_disk_full_on_dev_full_counts_lost_bytes_and_reports_once() -> None:
    problems: list[str] = []
    log = RotatingFile(Path("/dev/full"), 1000, 3, problems.append)
    assert not log.rotating  # not a regular file: never rotated (no "Illegal seek")
    for _ in range(100):
        log.write(b"x" * 100 + b"\n")
    log.close()
    assert log.lost_bytes == 10100
    assert log.failing
    assert len(problems) == 1 and "disk is full" in problems[0]


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the /dev/full test covers the write path")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_disk_full_on_a_tiny_tmpfs_resumes_when_space_returns(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "mnt", "64k") as mnt:
        filler = mnt / "filler"
        problems: list[str] = []
        log = RotatingFile(mnt / "svc.log", 0, 0, problems.append)
        line = b"y" * 99 + b"\n"
        with open(filler, "wb") as f:
            with contextlib.suppress(OSError):
                f.write(b"f" * 60_000)
        for _ in range(200):
            log.write(line)
        assert log.failing and log.lost_bytes > 0
        assert len(problems) == 1 and "disk is full" in problems[0]
        kept = (mnt / "svc.log").stat().st_size
        assert kept + log.lost_bytes == 200 * len(line)
        filler.unlink()
        log.write(b"back\n")
        log.close()
        assert not log.failing
        assert len(problems) == 2 and "written again" in problems[1]
        assert (mnt / "svc.log").read_bytes().endswith(b"back\n")


# ---------------------------------------------------------------------------------------------
# echo


def test_echo_prefixes_whole_lines_and_never_interleaves(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    echo = Echo(write_fd)
    a, b = echo.line_writer("a"), echo.line_writer("bb")
    out = bytearray()
    reader = threading.Thread(target=read_into, args=(read_fd, out))
    reader.start()
    try:
        for i in range(200):
            a.write(b"alpha %d part1 " % i)
            b.write(b"beta %d part1 " % i)
            a.write(b"part2\nalpha-second %d\n" % i)
            b.write(b"part2\n")
        a.write(b"unterminated")
        a.flush()
        b.flush()
    finally:
        echo.close()
        os.close(write_fd)
        reader.join(5)
    lines = bytes(out).split(b"\n")
    assert lines.pop() == b""
    assert lines.count(b"a | unterminated") == 1
    assert len([ln for ln in lines if ln.startswith(b"a | alpha ")]) == 200
    for ln in lines:
        assert re.fullmatch(rb"a \| (alpha \d+ part1 part2|alpha-second \d+|unterminated)|bb \| beta \d+ part1 part2", ln), ln
    assert echo.dropped == {}


def read_into(fd: int, out: bytearray) -> None:
    while chunk := os.read(fd, 1 << 16):
        out += chunk
    os.close(fd)


def test_echo_never_blocks_on_a_pipe_nobody_reads_and_reports_drops() -> None:
    read_fd, write_fd = os.pipe()
    echo = Echo(write_fd, queue_chunks=8, queue_bytes=64 * 1024)
    stream = echo.line_writer("chatty")
    chunk = b"".join(b"chatty output line %05d\n" % i for i in range(1000))
    start = time.monotonic()
    for _ in range(1000):  # 24 MB of lines into a 64 KiB pipe nobody reads
        stream.write(chunk)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"producer was blocked for {elapsed:.2f} s"
    dropped = echo.dropped["chatty"]
    assert dropped > 900_000
    out = bytearray()
    reader = threading.Thread(target=read_into, args=(read_fd, out))
    reader.start()
    assert wait_until(lambda: b"[qasup] echo dropped" in out)
    echo.close()
    os.close(write_fd)
    reader.join(5)
    text = bytes(out)
    reported = sum(int(n) for n in re.findall(rb"\[qasup\] echo dropped (\d+) lines of chatty\n", text))
    assert reported == dropped
    shown = len(re.findall(rb"^chatty \| chatty output line \d{5}$", text, re.M))
    assert shown + dropped == 1000 * 1000


def test_echo_loses_nothing_and_keeps_the_order_when_a_full_pipe_is_read_again() -> None:
    read_fd, write_fd = os.pipe()
    echo = Echo(write_fd)   # the default queue (8 MiB) holds all of it: nothing is dropped
    stream = echo.line_writer("s")
    lines = [b"%06d " % i + b"x" * 200 + b"\n" for i in range(5000)]   # ~1 MB into a 64 KiB pipe nobody reads yet
    for i in range(0, len(lines), 10):
        stream.write(b"".join(lines[i:i + 10]))
    out = bytearray()
    reader = threading.Thread(target=read_into, args=(read_fd, out))
    reader.start()
    try:
        assert wait_until(lambda: len(out) >= sum(len(b"s | ") + len(ln) for ln in lines))
        stream.write(b"after\n")   # the writer has caught up and sleeps: woken again, still in order
        assert wait_until(lambda: bytes(out).endswith(b"s | after\n"))
    finally:
        echo.close()
        os.close(write_fd)
        reader.join(5)
    assert bytes(out) == b"".join(b"s | " + ln for ln in lines) + b"s | after\n"
    assert echo.dropped == {}


def test_echo_close_does_not_hang_on_a_stalled_stdout() -> None:
    read_fd, write_fd = os.pipe()
    try:
        echo = Echo(write_fd)
        stream = echo.line_writer("s")
        for _ in range(100):
            stream.write(b"z" * 10_000 + b"\n")
        start = time.monotonic()
        echo.close(timeout=0.3)
        assert time.monotonic() - start < 1.0
    finally:
        os.close(read_fd)  # the writer thread now gets EPIPE and ends
        os.close(write_fd)


# ---------------------------------------------------------------------------------------------
# following files and reading the tail


class Collector:
    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "watchfiles"])
def test_follow_survives_late_creation_rotation_and_truncation(tmp_path: Path, use_inotify: bool) -> None:
    path = tmp_path / "not" / "yet" / "worker.log"
    got = Collector()
    latencies: list[float] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            started = anyio.Event()
            tg.start_soon(lambda: follow(path, got, started=started, use_inotify=use_inotify))
            await started.wait()
            path.parent.mkdir(parents=True)
            append(path, b"first\n")
            latencies.append(await await_until(lambda: got.data == b"first\n"))
            append(path, b"second\n")
            latencies.append(await await_until(lambda: got.data.endswith(b"second\n")))
            # rename rotation: the old file's last bytes, then the new file from its start
            append(path, b"last of old\n")
            os.rename(path, path.with_name("worker.log.1"))
            append(path, b"new file\n")
            await await_until(lambda: got.data.endswith(b"new file\n"))
            # truncation (copytruncate)
            os.truncate(path, 0)
            append(path, b"after truncate\n")
            latencies.append(await await_until(lambda: got.data.endswith(b"after truncate\n")))
            append(path, b"more\n")
            await await_until(lambda: got.data.endswith(b"more\n"))
            # truncated and written past the old read position before the follower looked
            with open(path, "r+b") as f:
                f.truncate(0)
                f.write(b"rewritten from the start, longer than before\n")
            await await_until(lambda: got.data.endswith(b"longer than before\n"))
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert bytes(got.data) == (b"first\nsecond\nlast of old\nnew file\nafter truncate\nmore\n"
                               b"rewritten from the start, longer than before\n")
    if use_inotify:
        assert max(latencies) < 0.1, latencies  # target 20 ms; slack for a loaded CI machine


def test_follow_marker_latency_and_idle_cost(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    path.write_bytes(b"old content that from_end skips\n")
    patterns = PatternSet(["READY"])
    seen: list[float] = []
    scanner = LineScanner(patterns, lambda *_: seen.append(time.monotonic()))
    result: dict[str, float] = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            started = anyio.Event()
            tg.start_soon(lambda: follow(path, scanner.feed, started=started))
            await started.wait()
            cpu = time.process_time()
            await anyio.sleep(0.5)
            result["idle_cpu"] = time.process_time() - cpu
            written = time.monotonic()
            append(path, b"noise\nserver READY\n")
            await await_until(lambda: bool(seen))
            result["latency"] = seen[0] - written
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert len(seen) == 1
    assert result["latency"] < 0.02 * 5, result  # target 20 ms, slack for CI
    assert result["idle_cpu"] < 0.02, result


def test_tail_lines_reads_backwards_into_the_backup(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    assert tail_lines(path, 5) == b""
    log = RotatingFile(path, 1000, 3)
    lines = [b"line %04d\n" % i for i in range(250)]  # 10 bytes each: 100 lines per file
    for line in lines:
        log.write(line)
    log.close()
    assert path.read_bytes() == b"".join(lines[200:])
    assert tail_lines(path, 3) == b"".join(lines[-3:])
    assert tail_lines(path, 120) == b"".join(lines[-120:])  # 20 of them from svc.log.1
    assert tail_lines(path, 0) == b""
    append(path, b"no newline")
    assert tail_lines(path, 2) == lines[-1] + b"no newline"
    assert tail_lines(path, 1, max_bytes=4) == b"line"  # the end of "no newline": bounded


def test_tail_lines_of_big_log_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    path.write_bytes(b"a" * 100 + b"\n" + b"b" * 5000 + b"\n")
    assert tail_lines(path, 2, max_bytes=1000) == b"b" * 999 + b"\n"
    assert tail_lines(path, 1) == b"b" * 5000 + b"\n"


def test_follow_with_initial_lines_has_no_gap_or_overlap(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    path.write_bytes(b"".join(b"old %d\n" % i for i in range(10)))
    got = Collector()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            started = anyio.Event()
            tg.start_soon(lambda: follow(path, got, started=started, initial_lines=3))
            await started.wait()
            append(path, b"new\n")
            await await_until(lambda: got.data.endswith(b"new\n"))
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert bytes(got.data) == b"old 7\nold 8\nold 9\nnew\n"


def test_inotify_binding_reports_file_events(tmp_path: Path) -> None:
    from supervisor.logs import inotify as ino

    with ino.Inotify() as watcher:
        assert watcher.read_events() == []
        wd = watcher.add_watch(tmp_path, ino.IN_CREATE | ino.IN_MODIFY)
        append(tmp_path / "f.log", b"x")
        events = watcher.read_events()
        assert [(e.wd, e.name) for e in events][:1] == [(wd, b"f.log")]
        assert events[0].mask & ino.IN_CREATE
        assert any(e.mask & ino.IN_MODIFY for e in events)
        watcher.rm_watch(wd)
        with pytest.raises(FileNotFoundError):
            watcher.add_watch(tmp_path / "missing", ino.IN_CREATE)


def test_a_single_literal_marker_needs_no_hyperscan_and_keeps_its_anchor():
    """One literal marker (`^READY `, `Starting worker`) is scanned with `re`: as fast, and it spares every
    daemon Hyperscan's resident memory. An anchored literal still matches only at a line start."""
    from supervisor.logs.scan import PatternSet

    data = b"noise READY x\nREADY now\n" + b"x" * 1000 + b"\nStarting worker [7]\n"
    anchored = PatternSet(["^READY "])
    assert anchored.engine == "re"
    assert [(i, data[a:b]) for i, a, b in anchored.scan(data)] == [(0, b"READY now")]
    assert PatternSet(["Starting worker"]).engine == "re"
    assert PatternSet(["Starting worker", "CUDA out of memory"]).engine in ("hyperscan", "re2")


def test_validating_a_pattern_needs_neither_the_log_pipeline_nor_hyperscan() -> None:
    """`qasup check` validates `[[on_log]] match` and `[ready] log` with config.patterns alone; a PatternSet of
    one literal marker still does not load Hyperscan (about 5 MiB resident in every daemon)."""
    code = (
        "import sys\n"
        "from supervisor.config.patterns import PatternError, compile_line_pattern\n"
        "compile_line_pattern('^READY (?P<port>[0-9]+)$')\n"
        "try:\n"
        "    compile_line_pattern('caf\\\\u00e9')\n"
        "except PatternError:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m == 'hyperscan' or m.startswith('supervisor.logs'))\n"
        "assert not loaded, loaded\n"
        "from supervisor.logs.scan import PatternSet\n"
        "assert PatternSet(['^READY ']).engine == 're'\n"
        "assert 'hyperscan' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_pattern_sources_for_chunk_wide_scanning() -> None:
    from supervisor.config.patterns import can_match_empty, chunk_source, hyperscan_source, is_literal

    assert chunk_source(rb"\Aready\Z \\A\d") == rb"^ready$ \\A\d"  # an escaped backslash stays as it is
    assert hyperscan_source(rb"ready") == rb"ready"
    assert hyperscan_source(rb"ready$") == rb"ready\n"
    assert hyperscan_source(rb"a$|b") is None
    assert hyperscan_source(rb"[$]x\$") == rb"[$]x\$"
    assert [is_literal(s) for s in (b"^READY ", b"Starting worker", b"a.b", b"x*", b"a$")] == [
        True, True, False, False, False]
    assert [can_match_empty(re.compile(s)) for s in (rb"^$", rb"\b", rb"x*", rb"x+", rb"ready")] == [
        True, True, True, False, False]
