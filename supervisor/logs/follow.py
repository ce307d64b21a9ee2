"""Follow a file that a service writes itself (`[logs] tail`, `qasup logs -f`): hand every appended
byte to a callback, until cancelled.

Survives rename-rotation, truncation (copytruncate, `: > file`) and a file or folders that do not
exist yet.  On Linux it sleeps on an inotify descriptor (`supervisor.logs.inotify`): no CPU while
idle, writes seen within a millisecond or so; elsewhere, or when inotify is unavailable, watchfiles.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .limits import READ_SIZE
from .tail import tail_with_backup

if TYPE_CHECKING:
    import anyio

    from .inotify import Inotify

_SEEN_TAIL: Final = 64


class _Follower:
    """State of one followed path: the open file, its identity and the read position."""

    def __init__(self, path: Path, on_chunk: Callable[[bytes], None]) -> None:
        self.path = path
        self.on_chunk = on_chunk
        self.fd: int | None = None
        self.ident: tuple[int, int] | None = None
        self.pos = 0
        self.last = b""  # the bytes just before `pos`, to notice a truncation hidden by new writes

    def open_initial(self, from_end: bool, initial_lines: int) -> None:
        fd = self._open()
        if fd is None:
            return
        size = os.fstat(fd).st_size
        if from_end:
            self.pos = size
            self.last = os.pread(fd, _SEEN_TAIL, max(0, size - _SEEN_TAIL))
            if initial_lines > 0:
                text = tail_with_backup(self.path, (fd, size), initial_lines, 8 << 20)
                if text:
                    self.on_chunk(text)

    def _open(self) -> int | None:
        """Open the path, to be read from its start: the new fd, or None while there is no file."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return None
        st = os.fstat(fd)
        self.fd, self.ident, self.pos, self.last = fd, (st.st_dev, st.st_ino), 0, b""
        return fd

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    async def drain(self) -> None:
        """Hand over everything appended since the last read (from 0 after a truncation)."""
        import anyio.lowlevel

        if self.fd is None:
            return
        if self.pos and self._truncated(self.fd):
            self.pos, self.last = 0, b""  # truncated (copytruncate, `: > file`): start over
        while True:
            data = os.pread(self.fd, READ_SIZE, self.pos)
            if not data:
                return
            self.pos += len(data)
            self.last = data[-_SEEN_TAIL:] if len(data) >= _SEEN_TAIL else (self.last + data)[-_SEEN_TAIL:]
            self.on_chunk(data)
            if len(data) == READ_SIZE:
                await anyio.lowlevel.checkpoint()

    def _truncated(self, fd: int) -> bool:
        """Shorter than what was read, or (truncated and written again before we looked) no
        longer holding the bytes last read just before the read position."""
        if os.fstat(fd).st_size < self.pos:
            return True
        if not self.last:
            return False
        return os.pread(fd, len(self.last), self.pos - len(self.last)) != self.last

    async def check(self) -> None:
        """Read what is new, and switch to a file that replaced ours (rotation) or appeared."""
        await self.drain()
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return  # gone (renamed or deleted): keep the old file until a new one appears
        if (st.st_dev, st.st_ino) != self.ident:
            self.close()
            if self._open() is not None:
                await self.drain()


def _nearest_existing(folder: Path) -> Path:
    while not folder.is_dir() and folder.parent != folder:
        folder = folder.parent
    return folder


async def follow(
    path: Path,
    on_chunk: Callable[[bytes], None],
    *,
    from_end: bool = True,
    started: anyio.Event | None = None,
    initial_lines: int = 0,
    use_inotify: bool | None = None,
) -> None:
    """Hand every byte appended to `path` to `on_chunk`, until cancelled.

    Survives rename-rotation (the rest of the old file is read, then the new one from its start),
    truncation (reads again from the start), and a file or folders that do not exist yet (read
    from the start once created).  `from_end` skips what the file holds at the start; with
    `initial_lines` those last lines (continued into `path.1` if needed) are handed over first,
    with no gap or overlap with what follows (`qasup logs -n N -f`).  `started` is set once
    watching has begun: bytes written after that are seen.

    On Linux this sleeps on an inotify descriptor (no CPU while idle, writes seen within a
    millisecond or so); elsewhere, or with `use_inotify=False`, watchfiles is used.
    """
    follower = _Follower(Path(path).absolute(), on_chunk)
    try:
        follower.open_initial(from_end, initial_lines)
        inotify = None
        if use_inotify is not False:
            try:
                from .inotify import Inotify

                inotify = Inotify()
            except OSError:
                if use_inotify:
                    raise
        if inotify is not None:
            with inotify:
                await _follow_inotify(follower, inotify, started)
        else:
            await _follow_watchfiles(follower, started)
    finally:
        follower.close()


async def _follow_inotify(follower: _Follower, inotify: Inotify, started: anyio.Event | None) -> None:
    import anyio

    from . import inotify as ino

    target_dir = follower.path.parent
    name = os.fsencode(follower.path.name)
    ancestor_mask = (ino.IN_CREATE | ino.IN_MOVED_TO | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF
                     | ino.IN_ONLYDIR)
    dir_mask = (ancestor_mask | ino.IN_MODIFY | ino.IN_CLOSE_WRITE | ino.IN_MOVED_FROM
                | ino.IN_DELETE)
    renamed = ino.IN_CREATE | ino.IN_MOVED_TO | ino.IN_MOVED_FROM | ino.IN_DELETE
    lost = ino.IN_IGNORED | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF | ino.IN_UNMOUNT
    wd: int | None = None
    watched: Path | None = None

    def sync_watch() -> None:
        """Watch the file's folder, or while it is missing its nearest existing ancestor."""
        nonlocal wd, watched
        while True:
            folder = _nearest_existing(target_dir)
            if folder == watched:
                return
            if wd is not None:
                inotify.rm_watch(wd)
                wd, watched = None, None
            try:
                wd = inotify.add_watch(folder, dir_mask if folder == target_dir else ancestor_mask)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed meanwhile: look again
            watched = folder  # loop once more: a folder may have appeared before the watch did

    sync_watch()
    await follower.check()
    if started is not None:
        started.set()
    fd = inotify.fileno()
    while True:
        await anyio.wait_readable(fd)
        rewatch = restat = modified = False
        for event in inotify.read_events():
            if event.mask & ino.IN_Q_OVERFLOW:
                rewatch = restat = True
            elif event.wd != wd:
                continue
            elif event.mask & lost:
                if not event.mask & ino.IN_IGNORED and wd is not None:
                    inotify.rm_watch(wd)
                wd, watched = None, None
                rewatch = restat = True
            elif watched != target_dir:
                rewatch = restat = True  # something appeared on the way to the folder
            elif event.name == name:
                if event.mask & renamed:
                    restat = True
                else:
                    modified = True
        if rewatch:
            sync_watch()
        if restat:
            await follower.check()
        elif modified:
            await follower.drain()


async def _follow_watchfiles(follower: _Follower, started: anyio.Event | None) -> None:
    from watchfiles import awatch

    target_dir = follower.path.parent
    while True:
        root = _nearest_existing(target_dir)
        await follower.check()
        # rust_timeout: the first (empty) yield tells that the watcher runs; later ones re-check
        # not recursive: once the next missing folder appears, the loop moves the watch down
        async for _changes in awatch(root, watch_filter=None, debounce=50, step=5,
                                     recursive=False, yield_on_timeout=True,
                                     rust_timeout=200):
            if started is not None and not started.is_set():
                await follower.check()
                started.set()
            await follower.check()
            if _nearest_existing(target_dir) != root:
                break
