"""The stack's state folder (``[stack] state_dir``, ``.qasup``): private to the user running qasup.

The folder is 0700 and what qasup creates in it (``events.jsonl``, ``prepare/NAME.hash`` and their
temporary files) is 0600, whatever the umask: a pre-existing folder of ours is tightened at start (and
said so), one that belongs to another user or is a shared sticky folder (``/tmp``) is left as it is,
and said so. The control socket in it is made 0600 by ``supervisor.control.listen``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dir(path: Path, say: Callable[[str], None] = lambda text: None) -> None:
    """Create ``path`` and its missing parents (``path`` itself 0700 whatever the umask), or tighten an
    existing folder of ours to 0700, saying so; a folder of another user or a sticky one is left alone
    (said too). Raises OSError."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)   # the umask only ever takes bits away
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode == DIR_MODE:
        return
    if st.st_uid != os.geteuid():
        say(f"state folder {path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); its mode "
            f"{mode:04o} is left as it is: set [stack] state_dir to a folder of your own")
    elif mode & stat.S_ISVTX:
        say(f"state folder {path} is a shared folder (mode {mode:04o}, sticky); its mode is left as it is: "
            f"set [stack] state_dir to a folder of its own")
    else:
        os.chmod(path, DIR_MODE)
        say(f"state folder {path} had mode {mode:04o}; now {DIR_MODE:04o} (only this user may use it)")


def _private(fd: int) -> int:
    """Make an open file of ours 0600 (a file created earlier under another umask); returns ``fd``."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != FILE_MODE and st.st_uid == os.geteuid():
        os.fchmod(fd, FILE_MODE)
    return fd


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags | O_CREAT | O_CLOEXEC)`` with mode 0600, an existing file of ours made 0600 too."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        return _private(fd)
    except OSError:
        os.close(fd)
        raise


def open_private_text(path: Path, mode: str = "a") -> IO[str]:
    """``open(path, mode, buffering=1, encoding='utf-8')`` through :func:`open_private` (line-buffered)."""
    return open(path, mode, buffering=1, encoding="utf-8", opener=open_private)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``: a 0600 temporary file beside it, renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", opener=lambda p, f: open_private(p, f | os.O_TRUNC)) as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


__all__ = ["DIR_MODE", "FILE_MODE", "make_private_dir", "open_private", "open_private_text", "write_private"]
