"""A service's log file: `RotatingFile` appends output and rotates it by size like supervisord.

Byte for byte (no decoding; a line is only split when it is longer than the whole file may be), and it
never stops the reader: a full disk or any failing write loses log bytes, says so once, and says so
again when writing works again.  `LogError` is the one error it raises, when the file or its folder
cannot be created or opened at all.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

_NL: Final = b"\n"


class LogError(Exception):
    """A log file or folder cannot be created or opened; the message says which and why."""


class RotatingFile:
    """Appends to a log file, rotating it like supervisord and Python's RotatingFileHandler.

    When a write would take the file past `max_bytes`, it is cut after the last complete line that
    fits (a line longer than `max_bytes` is split), then `name.N-1` -> `name.N` ... `name` ->
    `name.1` (the oldest is overwritten) and a fresh `name` is started; no byte is lost or
    duplicated.  `backups` 0 truncates the file instead; `max_bytes` 0 never rotates; a path that is
    not a regular file (`/dev/stdout`, a FIFO) is never rotated (supervisord's "Illegal seek").

    The folder is created as needed; `LogError` when it or the file cannot be.  A failing write
    (ENOSPC, EDQUOT, EIO...) never raises: the bytes are counted in `lost_bytes`, `failing` is set
    and `on_problem(message)` is called once per outage, and once more when writing works again.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int,
                 on_problem: Callable[[str], None] = lambda message: None) -> None:
        self.path = Path(path)
        self.max_bytes = max(0, int(max_bytes))
        self.backups = max(0, int(backups))
        self._on_problem = on_problem
        self.lost_bytes = 0
        self.failing = False
        self._rotation_failing = False
        self._fd = -1
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
        self.rotating = self.max_bytes > 0 and stat.S_ISREG(st.st_mode)
        self.size = st.st_size if stat.S_ISREG(st.st_mode) else 0

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, data: bytes) -> None:
        """Append `data` (rotating as needed); never raises for I/O problems."""
        if not data:
            return
        if self._fd < 0 and not self._reopen():
            self._lose(len(data), None)
            return
        view = memoryview(data)
        if not self.rotating:
            self._write_all(view)
            return
        offset, size = 0, len(data)
        while offset < size:
            room = self.max_bytes - self.size
            if size - offset <= room:
                self._write_all(view[offset:])
                return
            cut = offset
            if room > 0:
                nl = data.rfind(_NL, offset, offset + room)
                if nl >= 0:
                    cut = nl + 1
                elif self.size == 0:
                    cut = offset + room  # one line longer than the whole file: split it
            if cut > offset:
                self._write_all(view[offset:cut])
                offset = cut
                if self.failing:  # disk full: do not rotate empty files over the good backups
                    self._lose(size - offset, None)
                    return
            if not self._rotate():
                if self._fd >= 0:
                    self._write_all(view[offset:])  # keep logging into the oversized file
                else:
                    self._lose(size - offset, None)
                return

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
        self.size = 0 if not self.rotating else os.fstat(self._fd).st_size
        return True

    def _rotate(self) -> bool:
        """Rotate now; False (reported once) when the renames fail and the file stays as it is."""
        try:
            if self.backups == 0:
                os.ftruncate(self._fd, 0)
                self.size = 0
            else:
                base = str(self.path)
                for i in range(self.backups - 1, 0, -1):
                    older = f"{base}.{i}"
                    if os.path.lexists(older):
                        os.replace(older, f"{base}.{i + 1}")
                os.replace(base, f"{base}.1")
                os.close(self._fd)
                self._fd = -1
                self.size = 0
                self._open()
        except OSError as exc:
            if not self._rotation_failing:
                self._rotation_failing = True
                self._on_problem(f"cannot rotate log {self.path}: {exc.strerror or exc}")
            return False
        self._rotation_failing = False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
