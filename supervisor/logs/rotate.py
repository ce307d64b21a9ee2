"""A service's log file: `RotatingFile` appends output and rotates it by size like supervisord.

Byte for byte (no decoding), lines kept whole in one file (see `RotatingFile` for the one exception),
and it never stops the reader: a full disk or any failing write loses log bytes, says so once, and says
so again when writing works again.  A log file deleted or replaced under it is noticed within a second
of output and created anew.  `LogError` is the one error it raises, when the file or its folder cannot
be created or opened at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

_NL: Final = b"\n"
CHECK_EVERY: Final = 1.0        # seconds: how often (at a write) the path is checked to still be our file
MIN_SPLIT: Final = 1 << 20      # a line is kept whole up to max(SPLIT_FACTOR * max_bytes, MIN_SPLIT) bytes
SPLIT_FACTOR: Final = 4


def split_size(max_bytes: int) -> int:
    """How long a line may get before it is cut (0: never, when the file never rotates)."""
    return max(SPLIT_FACTOR * max_bytes, MIN_SPLIT) if max_bytes > 0 else 0


def _copy(src: int, start: int, count: int, put: Callable[[bytes, int], object]) -> None:
    """Hand `count` bytes of `src` from offset `start` to `put(chunk, offset_from_0)`, 1 MiB at a time."""
    done = 0
    while done < count:
        chunk = os.pread(src, min(count - done, 1 << 20), start + done)
        if not chunk:
            break
        put(chunk, done)
        done += len(chunk)


@contextlib.contextmanager
def _reopened(fd: int, flags: int) -> Iterator[int]:
    """`fd`'s file opened again with `flags` (through /proc: the same file even if its path changed)."""
    new = os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)
    try:
        yield new
    finally:
        os.close(new)


class LogError(Exception):
    """A log file or folder cannot be created or opened; the message says which and why."""


class LogCounts:
    """What a service's log files took, over all of them (a reload may change the file): ``written`` bytes of
    output that reached a file, ``dropped`` bytes lost to a failing write (a full disk). For ``/metrics``."""

    __slots__ = ("written", "dropped")

    def __init__(self) -> None:
        self.written = 0
        self.dropped = 0


class RotatingFile:
    """Appends to a log file, rotating it like supervisord and Python's RotatingFileHandler.

    A line that does not fit in what is left of `max_bytes` starts the next file: `name.N-1` ->
    `name.N` ... `name` -> `name.1` (the oldest is overwritten) and a fresh `name` is started.  No line
    spans two files and no byte is lost or duplicated: the start of a line that arrived in pieces and
    was already written moves to the fresh file with it.  A line longer than `max_bytes` goes whole
    into a file of its own, the one case where a file is larger than `max_bytes`.  The one exception:
    a line longer than `split_size(max_bytes)` (4 x `max_bytes`, at least 1 MiB: output that never
    ends its lines, a progress bar redrawn with `\r`) is cut into pieces of exactly that size, a file
    each.  `backups` 0 truncates the file instead (keeping the start of an unfinished line); `max_bytes`
    0 never rotates; a path that is not a regular file (`/dev/stdout`, a FIFO) is never rotated
    (supervisord's "Illegal seek").

    A regular file deleted or replaced under it (`rm`, logrotate without copytruncate) is noticed at
    the next write a second or more after the last check (or at the next rotation) and the path is
    opened anew (created, with its folder, when missing); `on_problem` says so once.

    The folder is created as needed; `LogError` when it or the file cannot be.  A failing write
    (ENOSPC, EDQUOT, EIO...) never raises: the bytes are counted in `lost_bytes`, `failing` is set
    and `on_problem(message)` is called once per outage, and once more when writing works again.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int,
                 on_problem: Callable[[str], None] = lambda message: None,
                 clock: Callable[[], float] = time.monotonic, counts: LogCounts | None = None) -> None:
        self.path = path if isinstance(path, Path) else Path(path)   # the unit's own (a service holds one)
        self.counts = LogCounts() if counts is None else counts
        self.max_bytes = max(0, int(max_bytes))
        self.backups = max(0, int(backups))
        self.split_at = split_size(self.max_bytes)
        self._on_problem = on_problem
        self._clock = clock
        self.lost_bytes = 0
        self.failing = False
        self.reopened = 0               # how many times the path was found deleted or replaced, and reopened
        self._rotation_failing = False
        self._recreate_failing = False
        self._fd = -1
        self._ident = (0, 0)            # (st_dev, st_ino) of the file we write
        self._partial = 0               # bytes of the unfinished last line in this file (0: at a line start)
        self.size = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LogError(f"cannot create log folder {self.path.parent}: {exc.strerror or exc}") from None
        try:
            self._open()
        except OSError as exc:
            raise LogError(f"cannot open log file {self.path}: {exc.strerror or exc}") from None
        st = os.fstat(self._fd)
        regular = stat.S_ISREG(st.st_mode)
        self.rotating = self.max_bytes > 0 and regular
        self._watch = regular           # a deleted /dev/stdout is not ours to recreate
        self._next_check = clock() + CHECK_EVERY

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._opened()

    def _opened(self) -> None:
        st = os.fstat(self._fd)
        self._ident = (st.st_dev, st.st_ino)
        self.size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        self._partial = 0

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        """Append `data` (rotating as needed); never raises for I/O problems. Counted in `counts`."""
        if not data:
            return
        lost = self.lost_bytes
        self._write(data)
        dropped = min(self.lost_bytes - lost, len(data))   # (a failed tail move may count bytes kept in the old file)
        counts = self.counts
        counts.written += len(data) - dropped
        counts.dropped += dropped

    def _write(self, data: bytes) -> None:
        if self._watch and self._fd >= 0 and self._clock() >= self._next_check:
            self._check_path()
        if self._fd < 0 and not self._reopen():
            self._lose(len(data), None)
            return
        view = memoryview(data)
        if not self.rotating:
            self._write_all(view)
            return
        end = len(data)
        if end <= self.max_bytes - self.size:     # the common case: it all fits
            self._write_all(view)
            nl = data.rfind(_NL)
            self._partial = end - nl - 1 if nl >= 0 else self._partial + end
            return
        offset = 0
        limit, split = self.max_bytes, self.split_at
        while offset < end:
            room = limit - self.size
            if end - offset <= room:
                self._put(data, view, offset, end)
                return
            nl = data.rfind(_NL, offset, offset + room) if room > 0 else -1
            if nl >= 0:     # the lines that fit, then the next line starts the next file
                self._put(data, view, offset, nl + 1)
                offset = nl + 1
                if not self._next_file(view, offset, 0):
                    return
            elif self.size > self._partial:
                # the current line does not fit after the others: it moves, its first bytes too, to the next file
                if not self._next_file(view, offset, self._partial):
                    return
            else:
                # the current line began this file and is longer than max_bytes: it stays whole in it, up to its
                # end or until `split` bytes of it are here (a line that never ends is cut there)
                stop = min(end, offset + split - self._partial)
                nl = data.find(_NL, offset, stop)
                cut = nl + 1 if nl >= 0 else stop
                self._put(data, view, offset, cut)
                offset = cut
                if self._partial >= split and offset < end and not self._next_file(view, offset, 0):
                    return

    def _put(self, data: bytes, view: memoryview, start: int, stop: int) -> None:
        if stop <= start:
            return
        self._write_all(view[start:stop])
        nl = data.rfind(_NL, start, stop)
        self._partial = stop - nl - 1 if nl >= 0 else self._partial + stop - start

    def _next_file(self, view: memoryview, offset: int, carry: int) -> bool:
        """Rotate (moving the last `carry` bytes of this file to the next) before writing `view[offset:]`;
        False when that rest was handled (written or lost) here."""
        if self.failing:  # disk full: do not rotate empty files over the good backups
            self._lose(len(view) - offset, None)
            return False
        if self._rotate(carry):
            return True
        if self._fd >= 0:
            self._write_all(view[offset:])  # keep logging into the oversized file
        else:
            self._lose(len(view) - offset, None)
        return False

    def _write_all(self, view: memoryview) -> None:
        try:
            while view:
                written = os.write(self._fd, view)
                self.size += written
                view = view[written:]
        except OSError as exc:
            self._lose(len(view), exc)
            return
        if self.failing:
            self.failing = False
            self._on_problem(f"log {self.path} is being written again; {self.lost_bytes} bytes were lost")

    def _lose(self, count: int, exc: OSError | None) -> None:
        self.lost_bytes += count
        if not self.failing:
            self.failing = True
            if exc is None:
                why = "the file could not be reopened"
            elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
                why = "the disk is full"
            else:
                why = exc.strerror or str(exc)
            self._on_problem(f"cannot write log {self.path}: {why}; output is dropped until it works again")

    def _reopen(self) -> bool:
        try:
            self._open()
        except OSError:
            return False
        return True

    # ------------------------------------------------------------------ the path under us

    def _check_path(self) -> bool:
        """Whether the path still names the file we write; if not, switch to a new file there (and say so).
        True when we switched."""
        self._next_check = self._clock() + CHECK_EVERY
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                return False    # cannot tell (EACCES on the folder...): keep the file we have
            return self._recreate("was deleted")
        if (st.st_dev, st.st_ino) == self._ident:
            return False
        if not stat.S_ISREG(st.st_mode):
            return self._recreate_failed("was replaced by something that is not a regular file")
        return self._recreate("was replaced by another file")

    def _recreate(self, what: str) -> bool:
        old = self._fd
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK,
                               0o644)
        except OSError as exc:
            self._fd = old
            return self._recreate_failed(f"{what}, and cannot be created again ({exc.strerror or exc})")
        os.set_blocking(self._fd, True)
        os.close(old)
        self._opened()
        self._recreate_failing = False
        self.reopened += 1
        self._on_problem(f"log {self.path} {what}: writing to a new {self.path.name} from now on")
        return True

    def _recreate_failed(self, why: str) -> bool:
        if not self._recreate_failing:
            self._recreate_failing = True
            self._on_problem(f"log {self.path} {why}; still writing into the old file")
        return False

    def _rotate(self, carry: int = 0) -> bool:
        """Rotate now, the last `carry` bytes (the start of an unfinished line) moved to the fresh file; False
        (reported once) when the renames fail and the file stays as it is."""
        if self._watch and self._check_path():
            return True     # the file was deleted or replaced: the new one is the fresh file
        try:
            if self.backups == 0:
                if carry:   # the line's start moves to the start of the file, then the rest is cut off
                    keep = self.size - carry
                    with _reopened(self._fd, os.O_RDWR) as rw:
                        _copy(rw, keep, carry, lambda chunk, at: os.pwrite(rw, chunk, at))
                os.ftruncate(self._fd, carry)
                self.size = carry
            else:
                base = str(self.path)
                for i in range(self.backups - 1, 0, -1):
                    older = f"{base}.{i}"
                    if os.path.lexists(older):
                        os.replace(older, f"{base}.{i + 1}")
                os.replace(base, f"{base}.1")
                old, self._fd = self._fd, -1
                try:
                    self._open()
                    if carry:
                        self._move_tail(old, carry)
                finally:
                    os.close(old)
            self._partial = carry
        except OSError as exc:
            if not self._rotation_failing:
                self._rotation_failing = True
                self._on_problem(f"cannot rotate log {self.path}: {exc.strerror or exc}")
            return False
        self._rotation_failing = False
        return True

    def _move_tail(self, old: int, carry: int) -> None:
        """Copy the last `carry` bytes of `old` (just rotated) into the fresh file, then cut them off `old`;
        a copy that fails half-way leaves them in both (duplicated, never lost)."""
        keep = os.fstat(old).st_size - carry
        lost = self.lost_bytes
        try:
            with _reopened(old, os.O_RDONLY) as src:
                _copy(src, keep, carry, lambda chunk, at: self._write_all(memoryview(chunk)))
        except OSError:
            return
        if self.lost_bytes == lost:
            os.ftruncate(old, keep)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
