"""Dotenv files: read them, and update keys in place without losing anything else.

Syntax read (the common subset of docker compose, python-dotenv and shell ``.env`` files):

* blank lines and ``#`` comment lines; an optional ``export `` prefix; spaces around ``=``;
* ``'single quoted'`` values are literal; ``"double quoted"`` values understand ``\\n \\r \\t
  \\" \\\\ \\$`` (other backslashes stay as written); quoted values may span lines;
* unquoted values end at the end of the line or at an inline comment (whitespace, then ``#``);
  surrounding whitespace is dropped;
* no ``${VAR}`` interpolation: values are taken literally (qasup expands ``${...}`` in units, not here);
* a NUL byte anywhere is an error (no environment value can hold one).

Only a regular file is read, at most :data:`~supervisor.config.safefile.MAX_FILE_BYTES` (1 MiB) of it, opened
without blocking: a FIFO, a device (``/dev/zero``), a directory or a larger file is refused with
:class:`~supervisor.config.safefile.FileRefused` (an ``OSError`` whose text says what the path is).

``update`` works like QAnything's ``update_or_append_to_env``: every existing ``KEY=`` line (also
``export KEY=``) is rewritten in place, keys not present are appended; comments, order, unknown keys
and the file's mode are kept. The new file is written beside the old one, fsynced and renamed over
it, so a crash leaves either the old or the new file, never a half-written one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from supervisor.config.safefile import read_regular
from supervisor.records import dataclass

__all__ = ["DotenvError", "format_value", "load", "parse", "update"]

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_WRITABLE_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXPORT_RE = re.compile(r"export[ \t]+")
_BARE_VALUE_RE = re.compile(r"[A-Za-z0-9_./:,@%+=\-]+")   # whole value (fullmatch: "$" would allow a final "\n")
_DOUBLE_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPE_RE = re.compile(r'\\([nrt"\\$])')
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


class DotenvError(ValueError):
    """A line that is not ``KEY=VALUE``; ``str()`` names the line number."""

    def __init__(self, line: int, message: str, path: str | None = None) -> None:
        self.line = line
        self.path = path
        self.message = message
        where = f"{path}:{line}" if path else f"line {line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class _Entry:
    """One assignment: where it is in the text (``start`` to ``end``, end of line excluded)."""

    key: str
    value: str
    start: int
    end: int
    export: bool


def parse(text: str) -> dict[str, str]:
    """The assignments in ``text`` (the last one wins for a repeated key). Raises DotenvError."""
    return {entry.key: entry.value for entry in _scan(text)}


def _read(path: str | os.PathLike[str]) -> str:
    """A dotenv file's text: a regular file of at most 1 MiB, UTF-8 (``UnicodeDecodeError`` otherwise)."""
    return read_regular(path).decode("utf-8")


def load(path: str | os.PathLike[str]) -> dict[str, str]:
    """``parse`` a file (UTF-8). Raises OSError if it cannot be read (``FileRefused`` if it is not a regular
    file of at most 1 MiB), DotenvError if malformed."""
    text = _read(path)
    try:
        return parse(text)
    except DotenvError as exc:
        raise DotenvError(exc.line, exc.message, str(path)) from None


def _scan(text: str) -> list[_Entry]:
    nul = text.find("\0")
    if nul >= 0:
        raise DotenvError(text.count("\n", 0, nul) + 1, "a NUL byte (\\0): no environment value can hold one")
    entries: list[_Entry] = []
    pos, length, line = 0, len(text), 1
    while pos < length:
        eol = text.find("\n", pos)
        if eol < 0:
            eol = length
        segment = text[pos:eol]
        stripped = segment.strip()
        if not stripped or stripped[0] == "#":
            pos, line = eol + 1, line + 1
            continue
        start = pos
        cur = pos + (len(segment) - len(segment.lstrip()))
        export = False
        m = _EXPORT_RE.match(text, cur, eol)
        if m is not None and _KEY_RE.match(text, m.end(), eol):
            export, cur = True, m.end()
        m = _KEY_RE.match(text, cur, eol)
        if m is None:
            raise DotenvError(line, f"expected KEY=VALUE, got {stripped[:60]!r}")
        key, cur = m.group(0), _skip_blanks(text, m.end(), eol)
        if cur >= eol or text[cur] != "=":
            raise DotenvError(line, f"expected '=' after {key!r}")
        after_equals = cur + 1
        cur = _skip_blanks(text, after_equals, eol)
        if cur < eol and text[cur] in "'\"":
            value, cur, line = _quoted(text, cur, line)
            eol = text.find("\n", cur)
            if eol < 0:
                eol = length
            rest = text[cur:eol].strip()
            if rest and not rest.startswith("#"):
                raise DotenvError(line, f"unexpected text after the quoted value of {key!r}: {rest[:40]!r}")
        else:
            value = _unquoted(text[after_equals:eol])
        entries.append(_Entry(key, value, start, eol, export))
        pos, line = eol + 1, line + 1
    return entries


def _skip_blanks(text: str, pos: int, end: int) -> int:
    while pos < end and text[pos] in " \t":
        pos += 1
    return pos


def _unquoted(raw: str) -> str:
    """An unquoted value: up to an inline comment (``#`` after whitespace), then stripped.

    ``raw`` starts right after the ``=``, so ``KEY= # note`` is empty and ``KEY=#x`` is ``#x``.
    """
    for index, char in enumerate(raw):
        if char == "#" and index > 0 and raw[index - 1] in " \t":
            raw = raw[:index]
            break
    return raw.strip()


def _quoted(text: str, pos: int, line: int) -> tuple[str, int, int]:
    """Read a quoted value starting at the quote; returns (value, position after it, line)."""
    if text[pos] == "'":
        close = text.find("'", pos + 1)
        if close < 0:
            raise DotenvError(line, "the value's opening ' is never closed")
        value = text[pos + 1 : close]
        return value, close + 1, line + value.count("\n")
    m = _DOUBLE_QUOTED_RE.match(text, pos)
    if m is None:
        raise DotenvError(line, "the value's opening \" is never closed")
    body = m.group(1)
    value = _ESCAPE_RE.sub(lambda e: _ESCAPES[e.group(1)], body) if "\\" in body else body
    return value, m.end(), line + body.count("\n")


def format_value(value: str) -> str:
    """``value`` as written to the file: bare when safe, else single or double quoted."""
    if "\0" in value:
        raise ValueError("a dotenv value cannot contain a NUL character")
    if _BARE_VALUE_RE.fullmatch(value):
        return value
    if "'" not in value and "\n" not in value and "\r" not in value:
        return f"'{value}'"  # literal in docker compose, python-dotenv and this parser
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("$", "\\$")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )
    return f'"{escaped}"'


def update(path: str | os.PathLike[str], values: Mapping[str, str]) -> None:
    """Set ``values`` in the dotenv file ``path``: rewrite existing keys in place, append the others.

    A missing file is created (mode 0666 less the umask). Existing comments, order, unknown keys,
    mode and (when permitted) owner are kept. A symlink is followed: its target is updated.
    Raises ValueError for a key that is not a shell identifier, DotenvError if the existing file
    is malformed (it is then left untouched), OSError for I/O errors (``FileRefused`` for an existing path
    that is not a regular file of at most 1 MiB: it is left untouched).
    """
    for key in values:
        if not _WRITABLE_KEY_RE.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
    formatted = {key: format_value(str(value)) for key, value in values.items()}

    target = Path(os.path.realpath(path))
    try:
        text = _read(target)   # a FIFO or a device is refused: never waited on, never replaced
        existing = target.stat()
    except FileNotFoundError:
        text, existing = "", None
    try:
        entries = _scan(text)
    except DotenvError as exc:
        raise DotenvError(exc.line, exc.message, str(path)) from None

    pieces: list[str] = []
    done: set[str] = set()
    pos = 0
    for entry in entries:
        if entry.key in formatted:
            pieces.append(text[pos : entry.start])
            prefix = "export " if entry.export else ""
            pieces.append(f"{prefix}{entry.key}={formatted[entry.key]}")
            pos = entry.end
            done.add(entry.key)
    pieces.append(text[pos:])
    new_text = "".join(pieces)
    appended = [f"{key}={formatted[key]}\n" for key in formatted if key not in done]
    if appended:
        if new_text and not new_text.endswith("\n"):
            new_text += "\n"
        new_text += "".join(appended)
    if existing is not None and new_text == text:
        return
    _write_atomically(target, new_text, existing)


def _write_atomically(target: Path, text: str, existing: os.stat_result | None) -> None:
    folder = target.parent
    hidden = target.name if target.name.startswith(".") else f".{target.name}"
    import tempfile  # imports random, which loads OpenSSL: only when a file is written

    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f"{hidden}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            if existing is not None:
                os.fchmod(handle.fileno(), existing.st_mode & 0o7777)
                if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
                    try:
                        os.fchown(handle.fileno(), existing.st_uid, existing.st_gid)
                    except PermissionError:
                        pass
            else:
                os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for row in status:
                if row.startswith("Umask:"):
                    return int(row.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
