"""The last lines of a log: read backwards from the end, continued into the backup `name.1`.

`tail_lines` serves `qasup logs -n N` (through the control server); `tail_with_backup` also lets
`supervisor.logs.follow` start from a file it already holds open, so the lines it hands over first and
what it reads next have no gap or overlap.  Reads are bounded (`max_bytes`), whatever the file's size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

_NL: Final = b"\n"


def _tail_sources(sources: Sequence[tuple[int, int]], n: int, max_bytes: int) -> bytes:
    """The last `n` lines of the concatenation of (fd, size) sources given newest first."""
    if n <= 0:
        return b""
    blocks: list[bytes] = []
    total = 0
    newlines = 0
    trailing: bool | None = None  # whether the whole stream ends with a newline
    for fd, size in sources:
        pos = size
        while pos > 0:
            step = min(64 * 1024, pos)
            pos -= step
            block = os.pread(fd, step, pos)
            if not block:
                break
            if trailing is None:
                trailing = block.endswith(_NL)
            blocks.append(block)
            total += len(block)
            newlines += block.count(_NL)
            if newlines - (1 if trailing else 0) >= n or total >= max_bytes:
                break
        if trailing is not None and (newlines - (1 if trailing else 0) >= n or total >= max_bytes):
            break
    data = b"".join(reversed(blocks))
    end = len(data) - 1 if data.endswith(_NL) else len(data)
    index = end
    for _ in range(n):
        index = data.rfind(_NL, 0, index)
        if index < 0:
            break
    start = index + 1 if index >= 0 else 0
    if len(data) - start > max_bytes:
        cut = data.find(_NL, len(data) - max_bytes)
        start = cut + 1 if 0 <= cut < end else len(data) - max_bytes
    return data[start:]


def tail_lines(path: Path, n: int, *, max_bytes: int = 8 << 20) -> bytes:
    """The last `n` lines of a log (read backwards; continued into `path.1` when the current file
    holds fewer), at most `max_bytes` bytes; b"" when there is no log yet."""
    return tail_with_backup(Path(path), None, n, max_bytes)


def tail_with_backup(path: Path, current: tuple[int, int] | None, n: int, max_bytes: int) -> bytes:
    """The last `n` lines of `path` then `path.1`; with `current` (an open fd of `path` and the size
    to read up to), that fd stands for `path`, which is not opened again."""
    fds: list[int] = []
    try:
        sources: list[tuple[int, int]] = []
        if current is not None:
            sources.append(current)
        candidates = [path.with_name(path.name + ".1")] if current is not None else [
            path, path.with_name(path.name + ".1")]
        for candidate in candidates:
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                continue
            fds.append(fd)
            sources.append((fd, os.fstat(fd).st_size))
        return _tail_sources(sources, n, max_bytes)
    finally:
        for fd in fds:
            os.close(fd)

