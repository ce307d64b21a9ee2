"""Content hash of files and folders, for ``[prepare] when_changed``.

The script compared an md5 of every file under ``third_party/FastChat`` with a stored checksum to
decide whether to re-run ``pip install -e``. This does the same job, better:

* each file contributes its path relative to the listed path, its kind and a BLAKE2b digest of its
  content (read in 1 MiB blocks); records are sorted, so the walk order does not matter, and a file
  renamed or moved changes the hash (the script hashed contents only);
* symbolic links are hashed as their target text and never followed: no loops, no escaping the tree
  (the script's ``find -type f`` skipped them altogether);
* FIFOs, sockets and devices are recorded by kind only, never opened (opening a FIFO would block);
* a missing path is hashed as "missing", distinctly, not an error; an unreadable file records the
  error, so it differs from both its readable and its missing self;
* byproducts that change without the source changing are ignored by default: ``__pycache__``,
  ``*.pyc``/``*.pyo``, ``*.egg-info`` (written by ``pip install -e`` itself) and ``.git``;
  otherwise running the service, or the prepare step, would invalidate the hash every time.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["DEFAULT_IGNORE", "hash_paths"]

#: Basename patterns skipped while walking folders (a listed path itself is never skipped).
DEFAULT_IGNORE: tuple[str, ...] = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info", ".git")

_BLOCK = 1024 * 1024
_VERSION = b"qasup-contenthash-1\n"


def hash_paths(paths: Sequence[str | os.PathLike[str]], ignore: Iterable[str] = DEFAULT_IGNORE) -> str:
    """A hex digest of the content under ``paths`` (files or folders, in the order given).

    Stable while nothing under the paths changes; changes when a file's content, name or kind
    changes, a file appears or disappears, or a listed path appears or disappears.
    """
    patterns = tuple(ignore)
    import hashlib  # here: hashlib loads OpenSSL, which the daemon needs only when it hashes

    total = hashlib.blake2b(digest_size=32)
    total.update(_VERSION)
    buffer = bytearray(_BLOCK)
    for position, path in enumerate(paths):
        records = sorted(_records(Path(path), patterns, buffer))
        total.update(f"path {position} {len(records)}\n".encode())
        for record in records:
            total.update(record)
    return total.hexdigest()


def _records(root: Path, patterns: tuple[str, ...], buffer: bytearray) -> list[bytes]:
    """One ``kind NUL relpath NUL detail NL`` record per entry under ``root`` (root itself is ``.``)."""
    records: list[bytes] = []
    pending: list[tuple[Path, str]] = [(root, ".")]
    while pending:
        path, rel = pending.pop()
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            records.append(_record("missing", rel, ""))
            continue
        except OSError as exc:
            records.append(_record("error", rel, exc.strerror or type(exc).__name__))
            continue
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            try:
                records.append(_record("link", rel, os.readlink(path)))
            except OSError as exc:
                records.append(_record("error", rel, exc.strerror or type(exc).__name__))
        elif stat.S_ISREG(mode):
            records.append(_record("file", rel, _file_digest(path, buffer)))
        elif stat.S_ISDIR(mode):
            records.append(_record("dir", rel, ""))
            try:
                with os.scandir(path) as scan:
                    names = [entry.name for entry in scan]
            except OSError as exc:
                records.append(_record("error", rel, exc.strerror or type(exc).__name__))
                continue
            for name in names:
                if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                    continue
                pending.append((path / name, name if rel == "." else f"{rel}/{name}"))
        else:
            records.append(_record("special", rel, oct(stat.S_IFMT(mode))))
    return records


def _record(kind: str, rel: str, detail: str) -> bytes:
    return b"\0".join(
        (kind.encode(), os.fsencode(rel), os.fsencode(detail))
    ) + b"\n"


def _file_digest(path: Path, buffer: bytearray) -> str:
    """BLAKE2b of the file's content, or ``error:...`` when it cannot be read."""
    import hashlib

    digest = hashlib.blake2b(digest_size=32)
    view = memoryview(buffer)
    try:
        # O_NONBLOCK|O_NOFOLLOW: if the file was swapped for a FIFO or a link since lstat, do not
        # block on it or follow it; the fstat check then records it as an error.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb", buffering=0) as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "error:changed while hashing"
            while True:
                count = handle.readinto(buffer)
                if not count:
                    break
                digest.update(view[:count])
    except OSError as exc:
        return f"error:{exc.strerror or type(exc).__name__}"
    return digest.hexdigest()
