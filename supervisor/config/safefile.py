"""Reading a configuration file without letting it freeze or bloat the reader.

Unit files, drop-ins, ``qasup.toml`` and env files are read only when they are *regular* files, and only up to
:data:`MAX_FILE_BYTES`. A FIFO would block the reader until something writes to it (a frozen daemon),
``/dev/zero`` or ``/dev/urandom`` never end, a 2 GB file would be held in memory whole: each is refused with
:class:`FileRefused`, whose text says what the path is (``is a FIFO, not a regular file``).

The path is looked at (``stat``, following symbolic links) before it is opened, so that a device is never even
opened; it is then opened with ``O_NONBLOCK | O_CLOEXEC | O_NOCTTY`` and looked at again (``fstat``), so that
a file swapped for a FIFO in between cannot block the read either.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["MAX_FILE_BYTES", "FileRefused", "describe_kind", "file_problem", "read_regular"]

MAX_FILE_BYTES = 1024 * 1024
"""The most qasup reads from one configuration file (unit file, drop-in, ``qasup.toml``, env file): 1 MiB."""

_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
)


class FileRefused(OSError):
    """A path that is not a regular file of at most the limit; ``str()`` is the reason, without the path
    (``is a FIFO, not a regular file``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def describe_kind(mode: int) -> str:
    """What a file of ``mode`` is, in words: ``a FIFO``, ``a directory``, ``a character device``, ..."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


def _refuse(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"is {describe_kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise FileRefused(_too_large(st.st_size, limit))


def _too_large(size: int | None, limit: int) -> str:
    shown = f"{size} bytes" if size is not None else "larger"
    most = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
    return f"is {shown}, more than the {most} qasup reads from a configuration file"


def read_regular(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (symbolic links followed), at most ``limit`` of them.

    Raises :class:`FileRefused` for anything else (a FIFO, a device, a directory, a larger file) and the
    usual :class:`OSError` (``FileNotFoundError``, ``PermissionError``, ...) when it cannot be opened. Never
    blocks on the file's kind: devices are refused before they are opened.
    """
    _refuse(os.stat(path), limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        _refuse(os.fstat(fd), limit)
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            except BlockingIOError:   # not a regular file after all (fstat said it was): refuse, do not wait
                raise FileRefused("cannot be read without waiting: not a regular file") from None
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:   # it grew after fstat
                raise FileRefused(_too_large(None, limit))
    finally:
        os.close(fd)


def file_problem(path: str | os.PathLike[str], what: str = "a regular file") -> str | None:
    """Why ``path`` (an entry of a folder that must be a regular file) cannot be read as one, or None.

    Names the symbolic-link cases: ``is a dangling symbolic link (to 'x.toml')``, ``is a symbolic link loop``;
    then ``is a directory, not WHAT``, ``is a FIFO, not WHAT``. None when it is a regular file (or when it
    vanished: it is then simply not there)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"is a dangling symbolic link (to {_link(path)!r}, which does not exist)"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return f"is a symbolic link loop (to {_link(path)!r}): it never reaches a file"
            return f"is a symbolic link (to {_link(path)!r}) that cannot be followed: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return f"is {describe_kind(st.st_mode)}, not {what}"
    return None


def _link(path: str | os.PathLike[str]) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"
