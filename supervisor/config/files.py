"""The stack's files on disk: where the stack is, reading TOML, and merging drop-ins over a unit file.

A unit ``NAME`` is ``services.d/NAME.toml`` with every ``NAME.d/*.toml`` drop-in (in ``services.d`` and in each
``stack.dropins`` folder, in that order, files sorted by name) merged over it. The merge remembers which file
wrote which key (``origins``), so that a problem is reported in the file the user must fix.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supervisor.errors import Problems

__all__ = ["STACK_FILE", "check_dropin_folders", "find_stack", "merge", "read_toml", "read_unit", "record_origins"]

STACK_FILE = "qasup.toml"


def find_stack(config: Path | None, cwd: Path) -> tuple[Path, Path | None]:
    """The stack folder and stack file: ``--config FILE``, else ``./qasup.toml``, else ``./services.d``."""
    if config is not None:
        config = (cwd / config).resolve() if not config.is_absolute() else config
        if config.is_dir():
            f = config / STACK_FILE
            return config, (f if f.is_file() else None)
        return config.parent, config
    f = cwd / STACK_FILE
    if f.is_file():
        return cwd.resolve(), f.resolve()
    return cwd.resolve(), None


def read_toml(path: Path, probs: Problems) -> dict[str, Any] | None:
    """Parse one TOML file; syntax errors keep tomllib's line and column."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        probs.add(path, "-", f"cannot read: {e.strerror or e}")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        probs.add(path, "-", f"not UTF-8 text (byte {e.start})")
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        probs.add(path, "-", f"TOML syntax error: {e}")
    except (ValueError, RecursionError, OverflowError) as e:  # deep nesting, huge numbers
        probs.add(path, "-", f"TOML syntax error: {e}")
    return None


def record_origins(origins: dict[str, Path], base: dict[str, Any], over: dict[str, Any], file: Path,
                   prefix: str = "") -> None:
    """Note in ``origins`` which keys ``file`` (a drop-in merged over ``base``) writes, as :func:`merge` does:
    a table merged into a table keeps its own origin, anything else now belongs to ``file``."""
    for k, v in over.items():
        key = f"{prefix}{k}"
        old = base.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            record_origins(origins, old, v, file, f"{key}.")
            continue
        for stale in [o for o in origins if o.startswith((f"{key}.", f"{key}["))]:
            del origins[stale]
        origins[key] = file


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Drop-in merge: tables merge key by key (recursively); scalars and arrays are replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def check_dropin_folders(dropin_dirs: Sequence[Path], names: set[str], probs: Problems) -> None:
    """Report ``NAME.d`` folders (holding drop-ins) for a unit that does not exist."""
    for d in dropin_dirs:
        if not d.is_dir():
            continue
        for sub in sorted(d.glob("*.d")):
            if sub.is_dir() and sub.name[:-2] not in names and any(sub.glob("*.toml")):
                probs.add(sub, "-", f"drop-in folder for unit {sub.name[:-2]!r}, which does not exist")


def read_unit(path: Path, dropin_dirs: Sequence[Path], probs: Problems
              ) -> tuple[dict[str, Any], tuple[Path, ...], dict[str, Path]] | None:
    """A unit file with its drop-ins merged over it: ``(data, sources, origins)``; None if the unit file
    cannot be read. ``sources`` are the files applied, in order; ``origins`` maps a key to the drop-in that
    wrote it last (keys the unit file wrote are not in it). A drop-in that cannot be read is skipped."""
    data = read_toml(path, probs)
    if data is None:
        return None
    sources = [path]
    origins: dict[str, Path] = {}
    for d in dropin_dirs:
        folder = d / f"{path.stem}.d"
        for dp in sorted(folder.glob("*.toml")) if folder.is_dir() else ():
            over = read_toml(dp, probs)
            if over is not None:
                record_origins(origins, data, over, dp)
                data = merge(data, over)
                sources.append(dp)
    return data, tuple(sources), origins
