"""Minimal Linux inotify binding through ctypes.

Why: following a log file must cost no CPU while nothing happens and must notice a write within
milliseconds.  watchfiles debounces (1.6 s by default) and its Rust loop wakes up every `step` ms;
inotify lets the event loop sleep in epoll on one file descriptor until the kernel has news.

Only what `supervisor.logs.follow.follow` needs: a non-blocking, close-on-exec instance, add/remove a
watch, and parse pending events.  `Inotify()` raises `OSError` where inotify is unavailable
(not Linux, seccomp, exhausted `max_user_instances`); callers then fall back to watchfiles.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Final

from supervisor.records import dataclass

IN_ACCESS: Final = 0x00000001
IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_CLOSE_NOWRITE: Final = 0x00000010
IN_OPEN: Final = 0x00000020
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_UNMOUNT: Final = 0x00002000
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_ISDIR: Final = 0x40000000

IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
_READ_SIZE: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    """One inotify event: `name` is the entry inside a watched directory (b"" for the directory itself)."""

    wd: int
    mask: int
    cookie: int
    name: bytes


def _load_libc() -> ctypes.CDLL:
    # CDLL(None): the symbols the interpreter already has, libc's included (ctypes.util.find_library would
    # run ldconfig and import shutil, tempfile and subprocess: ~1.4 MiB resident for one path)
    libc = ctypes.CDLL(None, use_errno=True)
    for fn in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
        if not hasattr(libc, fn):
            raise OSError(f"inotify is not available: libc has no {fn}")
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.inotify_rm_watch.restype = ctypes.c_int
    return libc


def _raise_errno(what: str, path: bytes | None = None) -> None:
    err = ctypes.get_errno()
    if path is None:
        raise OSError(err, f"{what}: {os.strerror(err)}")
    raise OSError(err, f"{what}: {os.strerror(err)}", os.fsdecode(path))


def parse_events(buf: bytes) -> list[Event]:
    """Split a buffer read from an inotify fd into events (names without their NUL padding)."""
    events: list[Event] = []
    offset = 0
    header = _EVENT_HEADER.size
    while offset + header <= len(buf):
        wd, mask, cookie, length = _EVENT_HEADER.unpack_from(buf, offset)
        start = offset + header
        name = buf[start:start + length].split(b"\0", 1)[0]
        events.append(Event(wd, mask, cookie, name))
        offset = start + length
    return events


class Inotify:
    """An inotify instance (non-blocking, close-on-exec).  Wait for `fileno()` to be readable, then
    call `read_events()`."""

    def __init__(self) -> None:
        self._libc = _load_libc()
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            _raise_errno("inotify_init1")
        self._fd: int = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("inotify instance is closed")
        return self._fd

    def add_watch(self, path: str | os.PathLike[str] | bytes, mask: int) -> int:
        """Watch `path` for the events in `mask`; returns the watch descriptor (the same one again
        for a path already watched: the mask is then replaced)."""
        raw = os.fsencode(path)
        wd = self._libc.inotify_add_watch(self.fileno(), raw, mask)
        if wd < 0:
            _raise_errno("inotify_add_watch", raw)
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; an already gone watch (its directory was deleted) is not an error."""
        if self._libc.inotify_rm_watch(self.fileno(), wd) < 0:
            if ctypes.get_errno() != 22:  # EINVAL: the kernel already removed it
                _raise_errno("inotify_rm_watch")

    def read_events(self) -> list[Event]:
        """All events pending now; [] when none (never blocks)."""
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(self.fileno(), _READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return [event for chunk in chunks for event in parse_events(chunk)]

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
