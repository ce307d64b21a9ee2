"""Parsing of the small value languages that unit files use: durations, sizes, signals, names."""

from __future__ import annotations

import re
import signal as _signal

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|k|K|M|G)?$")
_SIZE_UNITS = {
    None: 1, "B": 1, "k": 1024, "K": 1024, "KiB": 1024, "M": 1024**2, "MiB": 1024**2, "G": 1024**3,
    "GiB": 1024**3, "TiB": 1024**4, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
}


def parse_duration(text: str) -> float:
    """``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``, or combinations such as ``"1m30s"``; returns seconds."""
    if not isinstance(text, str) or not text:
        raise ValueError("a duration is a string such as \"500ms\", \"10s\", \"5m\" or \"1h\"")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration such as \"500ms\", \"10s\", \"5m\" or \"1h\"")
    return total


def parse_size(value: object) -> int:
    """``"512KiB"``, ``"50MiB"``, ``"1GiB"`` or a byte count; returns bytes."""
    if isinstance(value, bool):
        raise ValueError("a size is a byte count or a string such as \"50MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value.strip())
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
        raise ValueError(f"{value!r} is not a size such as \"512KiB\", \"50MiB\", \"1GiB\" or a byte count")
    raise ValueError("a size is a byte count or a string such as \"50MiB\"")


def parse_signal(value: object) -> int:
    """``"SIGTERM"``, ``"TERM"`` or a signal number."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(_signal.Signals(value))
        except ValueError:
            raise ValueError(f"{value} is not a signal number") from None
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        sig = getattr(_signal.Signals, name, None) if not name.startswith("SIG_") else None
        if sig is not None:
            return int(sig)
        raise ValueError(f"unknown signal {value!r} (use a name such as \"SIGTERM\", \"SIGINT\", \"SIGQUIT\")")
    raise ValueError("a signal is a name such as \"SIGTERM\" or a number")


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
