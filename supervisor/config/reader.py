"""Typed access to one TOML table, as the loaders read it.

A :class:`Reader` wraps one table (a unit file, ``[ready]``, one ``[[on_log]]`` entry, ...). Its getters check
a value's type, and its range or grammar where it has one; a bad value is reported as ``FILE: KEY: message``
(KEY the table's dotted prefix plus the key, FILE the drop-in that wrote it) and the getter returns the
default instead, so that loading goes on and every problem of a run is reported at once. Unknown keys are
reported when the reader is made, with the closest known key as a hint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

from supervisor.config.patterns import PatternError, compile_line_pattern
from supervisor.config.spec import file_of
from supervisor.config.values import parse_size
from supervisor.errors import Problems
from supervisor.protocol import NAME_RE, parse_duration

__all__ = ["MISSING", "Reader", "closest", "typename"]

_D = TypeVar("_D")
_T = TypeVar("_T")

MISSING: Any = object()
"""The value of a key that the table does not hold (``raw`` returns it; a default that means "leave it out")."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUL = ("contains a NUL byte (\\u0000), which no command, argument, environment value or path can hold "
        "(in a pattern, write \\x00 to match one)")


class Reader:
    """Typed access to one TOML table, reporting problems under a dotted key prefix (``ready.``, ``on_log[2].``)."""

    def __init__(self, probs: Problems, file: Path, data: dict[str, Any], prefix: str, allowed: set[str],
                 origins: Mapping[str, Path] | None = None) -> None:
        self.probs, self.file, self.data, self.prefix = probs, file, data, prefix
        self.origins = origins or {}
        for key in data:
            if key not in allowed:
                hint = closest(key, allowed)
                self.err(key, "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))

    def key(self, key: str) -> str:
        """The full dotted key of ``key`` in this table."""
        return f"{self.prefix}{key}"

    def err(self, key: str, message: str) -> None:
        """Report a problem with ``key``, in the file that wrote it."""
        full = self.key(key).replace("\0", "\\0")   # a NUL in a key's name is shown, never written raw
        self.probs.add(file_of(self.origins, full, self.file), full, message)

    def raw(self, key: str) -> Any:
        """The value as written, or :data:`MISSING`."""
        return self.data.get(key, MISSING)

    def typed(self, key: str, kind: type | tuple[type, ...], what: str, default: Any) -> Any:
        """The value if it is a ``kind`` (a boolean only if ``kind`` says so), else ``default``."""
        v = self.data.get(key, MISSING)
        if v is MISSING:
            return default
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.err(key, f"expected {what}, got a boolean")
            return default
        if not isinstance(v, kind):
            self.err(key, f"expected {what}, got {typename(v)}")
            return default
        if isinstance(v, str) and "\0" in v:
            self.err(key, _NUL)
            return default
        return v

    @overload
    def string(self, key: str) -> str | None: ...
    @overload
    def string(self, key: str, default: _D) -> str | _D: ...
    def string(self, key: str, default: Any = None) -> Any:
        return self.typed(key, str, "a string", default)

    def boolean(self, key: str, default: bool) -> bool:
        return self.typed(key, bool, "true or false", default)

    def integer(self, key: str, default: _D, minimum: int = 0) -> int | _D:
        v = self.typed(key, int, "an integer", default)
        if v is not default and v < minimum:
            self.err(key, f"must be at least {minimum}")
            return default
        return v

    def converted(self, key: str, convert: Callable[[Any], _T], default: _D) -> _T | _D:
        """``convert(value)``; its ``ValueError`` (or ``TypeError``, ``OverflowError``) text is the problem."""
        v = self.data.get(key, MISSING)
        if v is MISSING:
            return default
        try:
            return convert(v)
        except (ValueError, TypeError, OverflowError) as e:
            self.err(key, str(e))
            return default

    def duration(self, key: str, default: float) -> float:
        return self.converted(key, parse_duration, default)

    def size(self, key: str, default: int) -> int:
        return self.converted(key, parse_size, default)

    def enum(self, key: str, choices: tuple[str, ...], default: _D) -> str | _D:
        v = self.string(key, default)
        if v is not default and v not in choices:
            self.err(key, f"{v!r} is not one of {', '.join(choices)}")
            return default
        return v

    def str_list(self, key: str, *, nonempty: bool = False) -> tuple[str, ...] | None:
        v = self.data.get(key, MISSING)
        if v is MISSING:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.err(key, f"expected a list of strings, got {typename(v)}")
            return None
        if nonempty and not v:
            self.err(key, "must not be empty")
            return None
        nul = next((i for i, x in enumerate(v, 1) if "\0" in x), None)
        if nul is not None:
            self.err(key, f"element {nul} {_NUL}")
            return None
        return tuple(v)

    def names(self, key: str) -> tuple[str, ...]:
        """A list of service names; bad ones and repeats are reported once and left out."""
        v = self.str_list(key) or ()
        for n in v:
            if not NAME_RE.match(n):
                self.err(key, f"{n!r} is not a valid service name (lowercase letters, digits, '_', '.', '-')")
        if len(set(v)) != len(v):
            self.err(key, "lists a name twice")
        return tuple(n for n in dict.fromkeys(v) if NAME_RE.match(n))  # reported once: later checks skip them

    def regex(self, key: str) -> str | None:
        """A log pattern: a Python regular expression that also compiles against bytes (log lines)."""
        v = self.string(key)
        if v is None:
            return v
        try:
            re.compile(v)
        except (re.error, OverflowError, RecursionError) as e:
            self.err(key, f"bad regular expression {v!r}: {e}")
            return None
        try:
            compile_line_pattern(v)
        except (PatternError, OverflowError, RecursionError) as e:
            self.err(key, str(e))
            return None
        return v

    def table(self, key: str) -> dict[str, Any] | None:
        v = self.data.get(key, MISSING)
        if v is MISSING:
            return None
        if not isinstance(v, dict):
            self.err(key, f"expected a table, got {typename(v)}")
            return None
        return v

    def sub(self, key: str, allowed: set[str]) -> Reader | None:
        """A reader for the sub-table ``key`` (None if it is absent or not a table)."""
        t = self.table(key)
        return None if t is None else Reader(self.probs, self.file, t, f"{self.key(key)}.", allowed, self.origins)

    def str_map(self, key: str) -> dict[str, str]:
        """An environment table: valid variable names to strings (numbers are written as text)."""
        t = self.table(key)
        if t is None:
            return {}
        out = {}
        for k, v in t.items():
            if not _ENV_NAME.match(k):
                self.err(f"{key}.{k}", "not a valid environment variable name")
            elif isinstance(v, bool) or not isinstance(v, (str, int, float)):
                self.err(f"{key}.{k}", f"expected a string, got {typename(v)}")
            elif isinstance(v, str) and "\0" in v:
                self.err(f"{key}.{k}", _NUL)
            else:
                out[k] = v if isinstance(v, str) else str(v)
        return out


def typename(v: object) -> str:
    """How a problem names a TOML value's type: ``a string``, ``an array``, ``a table``, ..."""
    return {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def closest(key: str, allowed: set[str]) -> str | None:
    """The known name closest to a misspelt ``key``, if one is close enough to suggest."""
    import difflib  # only when something is misspelt

    m = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    return m[0] if m else None
