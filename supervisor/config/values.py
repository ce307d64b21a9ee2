"""Parsing of the small value languages that only unit files use: sizes and signals (and how a duration is
shown). Durations and service names are shared with the CLI: their owner is :mod:`supervisor.protocol`."""

from __future__ import annotations

import re
import signal as _signal

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|k|K|M|G)?$")
_SIZE_UNITS = {
    None: 1, "B": 1, "k": 1024, "K": 1024, "KiB": 1024, "M": 1024**2, "MiB": 1024**2, "G": 1024**3,
    "GiB": 1024**3, "TiB": 1024**4, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
}


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
