"""The files qasup writes, in-process with real files: log lines kept whole across rotation (issue 11), a
log file deleted or replaced under a running writer (noticed and created anew), and the state folder's
modes (0700 folder, 0600 files) whatever the umask. The end-to-end tests are in test_engine_logs.py."""

from __future__ import annotations

import contextlib
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.engine.events import EventLog
from supervisor.engine.statedir import make_private_dir, open_private_text, write_private
from supervisor.logs.rotate import CHECK_EVERY, MIN_SPLIT, RotatingFile, split_size


def files_in_order(path: Path) -> list[Path]:
    """The backups oldest first, then the current file."""
    backups = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*backups, path]


def write_in_chunks(log: RotatingFile, data: bytes, rng: random.Random, biggest: int) -> None:
    i = 0
    while i < len(data):
        k = rng.randrange(1, biggest)
        log.write(data[i:i + k])
        i += k


def assert_whole_lines(parts: list[bytes]) -> None:
    """No line spans two files: every file but the last ends with a newline (each then starts a line)."""
    for n, part in enumerate(parts[:-1]):
        assert part.endswith(b"\n"), f"file {n} of {len(parts)} ends in the middle of a line: {part[-40:]!r}"


# ---------------------------------------------------------------------------------------------
# lines kept whole


@pytest.mark.parametrize("biggest_write", [7, 500, 100_000])
def test_a_line_of_three_times_max_bytes_stays_whole_and_no_byte_is_lost(tmp_path: Path, biggest_write: int):
    path = tmp_path / "svc.log"
    normal = [b"normal line %04d ...........\n" % i for i in range(120)]   # 29 bytes each
    long_line = b"L" * (3 * 1000 - 1) + b"\n"
    lines = normal[:50] + [long_line] + normal[50:]
    data = b"".join(lines)
    problems: list[str] = []
    log = RotatingFile(path, 1000, 50, problems.append)
    write_in_chunks(log, data, random.Random(biggest_write), biggest_write)
    log.close()
    parts = [p.read_bytes() for p in files_in_order(path)]
    assert b"".join(parts) == data
    assert_whole_lines(parts)
    holding = [p for p in parts if long_line in p]
    assert holding == [long_line], "the long line is whole, in a file of its own"
    assert all(len(p) <= 1000 for p in parts if p != long_line)
    assert not problems


def test_random_streams_keep_every_byte_and_every_line_whole(tmp_path: Path) -> None:
    for seed in range(25):
        rng = random.Random(seed)
        path = tmp_path / f"s{seed}.log"
        limit = rng.choice([64, 100, 1000])
        lines = [b"a" * (rng.choice([1, 5, 20, 63, 64, 65, 99, 100, 101, 250, 3 * limit]) - 1) + b"\n"
                 for _ in range(rng.randrange(1, 60))]
        data = b"".join(lines) + (b"unfinished" if seed % 3 == 0 else b"")
        log = RotatingFile(path, limit, 250)
        write_in_chunks(log, data, rng, rng.choice([3, 80, 5000]))
        log.close()
        parts = [p.read_bytes() for p in files_in_order(path)]
        assert b"".join(parts) == data, seed
        assert_whole_lines(parts)
        # a file over max_bytes holds one line only (longer than max_bytes)
        assert all(len(p) <= limit or p.count(b"\n") <= 1 for p in parts), seed


def test_a_line_that_never_ends_is_cut_at_split_size_pieces(tmp_path: Path) -> None:
    path = tmp_path / "bar.log"
    split = split_size(100)
    assert split == MIN_SPLIT and split_size(1 << 20) == 4 << 20 and split_size(0) == 0
    runaway = b"\r 42%|#####     |" * (2 * split // 16 + 100)   # a progress bar without a newline: > 2 pieces
    data = b"first\n" + runaway + b"\nlast\n"
    log = RotatingFile(path, 100, 10)
    write_in_chunks(log, data, random.Random(3), 300_000)
    log.close()
    parts = [p.read_bytes() for p in files_in_order(path)]
    assert b"".join(parts) == data
    assert parts[0] == b"first\n"
    assert [len(p) for p in parts[1:3]] == [split, split], "cut each time split_size bytes of it are in a file"
    assert parts[-1] == b"last\n"


# ---------------------------------------------------------------------------------------------
# a log file deleted or replaced under the writer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_deleted_log_file_is_created_again_at_the_next_check(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "svc.log"
    clock, problems = Clock(), []
    log = RotatingFile(path, 0, 0, problems.append, clock=clock)
    log.write(b"before\n")
    path.unlink()
    log.write(b"lost in the deleted file, within a second\n")
    assert not path.exists() and not problems
    clock.now += CHECK_EVERY
    log.write(b"after 1\n")
    log.write(b"after 2\n")
    assert path.read_bytes() == b"after 1\nafter 2\n"
    assert len(problems) == 1 and "was deleted" in problems[0] and str(path) in problems[0]
    # the whole folder gone: it is made again
    (tmp_path / "logs" / "svc.log").unlink()
    (tmp_path / "logs").rmdir()
    clock.now += CHECK_EVERY
    log.write(b"again\n")
    assert path.read_bytes() == b"again\n" and log.reopened == 2
    # nothing more is said while the file stays
    for _ in range(5):
        clock.now += CHECK_EVERY
        log.write(b"x\n")
    log.close()
    assert len(problems) == 2


def test_a_deleted_log_file_is_noticed_at_rotation_at_once(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    problems: list[str] = []
    log = RotatingFile(path, 100, 3, problems.append, clock=Clock())
    log.write(b"0123456789\n" * 9)
    path.unlink()
    log.write(b"0123456789\n" * 2)    # past max_bytes: the rotation finds the path gone
    log.close()
    assert path.read_bytes() == b"0123456789\n" * 2   # the line that did not fit starts the new file
    assert not (tmp_path / "svc.log.1").exists()
    assert len(problems) == 1 and "was deleted" in problems[0]


def test_a_log_moved_away_and_replaced_is_followed_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    clock, problems = Clock(), []
    log = RotatingFile(path, 0, 0, problems.append, clock=clock)
    log.write(b"old\n")
    path.rename(tmp_path / "svc.log.old")      # logrotate's create mode: move, then a new empty file
    path.write_bytes(b"")
    clock.now += CHECK_EVERY
    log.write(b"new\n")
    log.close()
    assert (tmp_path / "svc.log.old").read_bytes() == b"old\n"
    assert path.read_bytes() == b"new\n"
    assert len(problems) == 1 and "replaced by another file" in problems[0]


def test_a_log_replaced_by_a_fifo_is_not_opened(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    clock, problems = Clock(), []
    log = RotatingFile(path, 0, 0, problems.append, clock=clock)
    path.unlink()
    os.mkfifo(path)   # opening it for writing would block without a reader
    for _ in range(3):
        clock.now += CHECK_EVERY
        log.write(b"still written\n")
    log.close()
    assert len(problems) == 1 and "not a regular file" in problems[0]
    assert log.reopened == 0


def test_dev_stdout_style_targets_are_not_watched(tmp_path: Path) -> None:
    clock, problems = Clock(), []
    log = RotatingFile(Path("/dev/null"), 100, 3, problems.append, clock=clock)
    clock.now += CHECK_EVERY
    log.write(b"x\n")
    log.close()
    assert not problems


# ---------------------------------------------------------------------------------------------
# the state folder


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_state_folder_is_tightened_and_its_files_are_private_under_umask_000(tmp_path: Path) -> None:
    said: list[str] = []
    with umask(0):
        fresh = tmp_path / "a" / "fresh"
        make_private_dir(fresh, said.append)
        assert mode(fresh) == 0o700 and not said
        old = tmp_path / "old"
        old.mkdir()
        os.chmod(old, 0o777)
        make_private_dir(old, said.append)
        assert mode(old) == 0o700
        assert said == [f"state folder {old} had mode 0777; now 0700 (only this user may use it)"]
        (old / "events.jsonl").write_text("earlier\n")
        os.chmod(old / "events.jsonl", 0o666)
        with open_private_text(old / "events.jsonl") as f:
            f.write("later\n")
        assert mode(old / "events.jsonl") == 0o600
        assert (old / "events.jsonl").read_text() == "earlier\nlater\n"
        events = EventLog()
        events.open(fresh / "events.jsonl")
        events.emit({"ts": 1})
        events.close()
        assert mode(fresh / "events.jsonl") == 0o600
        write_private(fresh / "svc.hash", "abc\n")
        write_private(fresh / "svc.hash", "def\n")
        assert mode(fresh / "svc.hash") == 0o600 and (fresh / "svc.hash").read_text() == "def\n"
        assert sorted(p.name for p in fresh.iterdir()) == ["events.jsonl", "svc.hash"], "no temporary file left"


def test_a_shared_or_foreign_state_folder_is_left_alone_and_said(tmp_path: Path) -> None:
    said: list[str] = []
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    make_private_dir(shared, said.append)
    assert mode(shared) == 0o1777
    assert len(said) == 1 and "sticky" in said[0] and "state_dir" in said[0]
    if os.geteuid() != 0:
        return   # a folder of another user needs root to make
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o777)
    os.chmod(foreign, 0o777)
    os.chown(foreign, 65534, 65534)
    make_private_dir(foreign, said.append)
    assert mode(foreign) == 0o777
    assert "belongs to uid 65534" in said[1] and "state_dir" in said[1]


@pytest.mark.parametrize("backups", [0, 2])
def test_a_line_started_near_the_end_moves_whole_to_the_next_file(tmp_path: Path, backups: int) -> None:
    path = tmp_path / "svc.log"
    log = RotatingFile(path, 100, backups)
    log.write(b"123456789\n" * 9)            # 90 bytes
    log.write(b"begins ")                    # fits: written to this file, unfinished
    assert path.read_bytes().endswith(b"begins ")
    log.write(b"and goes on past max_bytes\n")
    log.write(b"next\n")
    log.close()
    assert path.read_bytes() == b"begins and goes on past max_bytes\nnext\n"
    if backups:
        assert (tmp_path / "svc.log.1").read_bytes() == b"123456789\n" * 9
