"""What a log pattern (`[[on_log]] match`, `[ready] log`) means, and its source for chunk-wide scanning.

The reference semantics are Python `re.search` on one line (bytes, without its newline):
`compile_line_pattern` gives that, and is all `qasup check` needs to validate a pattern (no Hyperscan).
The other functions translate a pattern's source for `supervisor.logs.scan.PatternSet`, which scans
whole chunks of lines at once: with `re` in MULTILINE mode, or with Hyperscan where it reads the
pattern as Python does.  They are pure text work; nothing here imports Hyperscan.
"""

from __future__ import annotations

import re
from typing import Final


class PatternError(ValueError):
    """A log pattern cannot be used (for instance a `\\u` escape, which byte patterns lack)."""


def compile_line_pattern(pattern: str | bytes) -> re.Pattern[bytes]:
    """Compile one log pattern as Python matches it against one line (bytes, no newline).

    Patterns are written as text and matched against raw bytes: text is encoded as UTF-8, so a
    non-ASCII character matches its UTF-8 bytes (inside a character class: any of those bytes).
    Raises `PatternError` with a readable message; config validation can call this directly.
    """
    raw = pattern.encode("utf-8", "surrogateescape") if isinstance(pattern, str) else pattern
    try:
        return re.compile(raw)
    except re.error as exc:
        hint = ""
        if b"\\u" in raw or b"\\U" in raw or b"\\N" in raw:
            hint = " (log patterns match bytes: write the character itself, not a \\u, \\U or \\N escape)"
        raise PatternError(f"bad log pattern {_show(pattern)}: {exc}{hint}") from None


def _show(pattern: str | bytes) -> str:
    return repr(pattern.decode("utf-8", "backslashreplace") if isinstance(pattern, bytes) else pattern)


def chunk_source(raw: bytes) -> bytes:
    """The pattern as used over a chunk of many lines: \\A and \\Z become ^ and $ so that, with
    MULTILINE, they mean the start and end of each line (as they do when matching one line)."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 1 < len(raw):  # backslash: copy the escape pair as a unit
            pair = raw[i:i + 2]
            out += b"^" if pair == b"\\A" else b"$" if pair == b"\\Z" else pair
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


# Syntax Python reads differently from PCRE/Hyperscan, which Hyperscan would accept silently:
# `x{,3}` (Python: 0 to 3; PCRE: literal) and POSIX classes `[[:alpha:]]` (Python: a plain set).
PYTHON_ONLY: Final = (b"{,", b"[:", b"[=", b"[.")


def _dollar_positions(src: bytes) -> list[int]:
    """Offsets of the `$` anchors in a pattern: not escaped, not inside a character class."""
    found: list[int] = []
    i, in_class = 0, False
    while i < len(src):
        c = src[i]
        if c == 0x5C:  # backslash: skip the escaped byte
            i += 2
            continue
        if in_class:
            if c == 0x5D:  # ]
                in_class = False
        elif c == 0x5B:  # [ : a leading ] (after an optional ^) is a member, not the end
            in_class = True
            i += 1
            if i < len(src) and src[i] == 0x5E:
                i += 1
            if i < len(src) and src[i] == 0x5D:
                i += 1
            continue
        elif c == 0x24:
            found.append(i)
        i += 1
    return found


def hyperscan_source(src: bytes) -> bytes | None:
    """The pattern for Hyperscan, or None when it should be left to `re`.

    Hyperscan 5.4 misses some MULTILINE `$` matches in multi-pattern databases (seen with the
    PyPI wheel: `[^a]b$` next to `b$`), so a final `$` becomes `\\n`, which is the same thing here
    because every scanned line is followed by a newline; a `$` anywhere else goes to `re`."""
    dollars = _dollar_positions(src)
    if not dollars:
        return src
    if dollars == [len(src) - 1]:
        return src[:-1] + b"\\n"
    return None


_LITERAL = re.compile(rb"\^?[^.^$*+?{}\[\]\\|()]+")


def is_literal(src: bytes) -> bool:
    """A plain string, optionally anchored at the start of the line."""
    return _LITERAL.fullmatch(src) is not None


def can_match_empty(rx: re.Pattern[bytes]) -> bool:
    """Whether a match may be empty (`^$`, `\\b`, `x*`): Hyperscan silently reports no empty match."""
    try:
        import importlib

        # the parser `re` itself uses (already loaded by `re`); its width bounds are exact enough.
        # Imported by name because typeshed has no stub for the private `re._parser`.
        parser = importlib.import_module("re._parser")
        return bool(parser.parse(rx.pattern, rx.flags).getwidth()[0] == 0)
    except Exception:  # the private parser changed: the cheap check still catches `^$` and `x*`
        return rx.search(b"") is not None
