"""The stack's files on disk: where the stack is, reading TOML, and merging drop-ins over a unit file.

A unit ``NAME`` is ``services.d/NAME.toml`` with every ``NAME.d/*.toml`` drop-in (in ``services.d`` and in each
``stack.dropins`` folder, in that order, files sorted by name) merged over it. The merge remembers which file
wrote which key (``origins``), so that a problem is reported in the file the user must fix.

Only regular files are read, at most 1 MiB each (:mod:`.safefile`). An entry named ``NAME.toml`` that is not
one (a dangling symbolic link, a link loop, a directory, a FIFO), a ``NAME.d`` that is not a folder, and a
folder that cannot be listed are problems, never skipped in silence.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from supervisor.config.safefile import FileRefused, file_problem, read_regular
from supervisor.config.spec import DropinPart
from supervisor.config.tomlerror import locate
from supervisor.errors import Problems

__all__ = ["STACK_FILE", "check_dropin_folders", "find_stack", "list_folder", "list_unit_files", "merge",
           "merge_parts", "read_toml", "read_unit", "record_origins"]

STACK_FILE = "qasup.toml"


def find_stack(config: Path | None, cwd: Path) -> tuple[Path, Path | None]:
    """The stack folder and stack file: ``--config FILE``, else ``./qasup.toml``, else ``./services.d``."""
    if config is not None:
        config = (cwd / config).resolve() if not config.is_absolute() else config
        if os.path.isdir(config):
            f = config / STACK_FILE
            return config, (f if os.path.lexists(f) else None)   # not a regular file: read_toml says why
        return config.parent, config
    f = cwd / STACK_FILE
    if os.path.lexists(f):
        return cwd.resolve(), (f.resolve() if os.path.isfile(f) else cwd.resolve() / STACK_FILE)
    return cwd.resolve(), None


def read_toml(path: Path, probs: Problems) -> dict[str, Any] | None:
    """Parse one TOML file; a syntax error is reported at its line and column (``FILE:LINE:COLUMN: ...``)."""
    try:
        raw = read_regular(path)
    except FileRefused as e:
        probs.add(path, "-", str(e))
        return None
    except OSError as e:
        probs.add(path, "-", file_problem(path) or f"cannot read: {e.strerror or e}")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        probs.add(path, "-", f"not UTF-8 text (byte {e.start})")
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, column, message = locate(text, str(e))
        probs.add(path, "-", f"TOML syntax error: {message}", line, column)
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


def list_folder(folder: Path, probs: Problems, what: str) -> list[str] | None:
    """The names in ``folder``, sorted; None (and a problem naming ``what`` the folder holds) when it cannot
    be listed."""
    try:
        return sorted(os.listdir(folder))
    except OSError as e:
        probs.add(folder, "-", f"cannot list this folder of {what}: {e.strerror or e}"
                  + (" (give qasup read and search permission on it)" if isinstance(e, PermissionError) else ""))
        return None


def list_unit_files(services_dir: Path, probs: Problems) -> tuple[list[Path], set[str]] | None:
    """The unit files in ``services_dir`` (regular files named ``*.toml``), and the names of the entries
    named so that are not (reported: dangling link, loop, directory, ...). None if the folder cannot be listed."""
    names = list_folder(services_dir, probs, "unit files")
    if names is None:
        return None
    files: list[Path] = []
    bad: set[str] = set()
    for n in names:
        if not n.endswith(".toml"):
            continue
        path = services_dir / n
        why = file_problem(path, "a unit file")
        if why is not None:
            probs.add(path, "-", why)
            bad.add(path.stem)
        elif os.path.lexists(path):
            files.append(path)
    return files, bad


def check_dropin_folders(dropin_dirs: Sequence[Path], names: set[str], probs: Problems) -> None:
    """Report what is wrong in the folders that hold ``NAME.d`` drop-in folders: a ``stack.dropins`` folder
    that is not one, or cannot be listed; a ``NAME.d`` that is not a folder (a file, a dangling link); and a
    ``NAME.d`` folder for a unit that does not exist. A missing ``stack.dropins`` folder is not a problem."""
    for d in dropin_dirs:
        if not os.path.lexists(d):
            continue
        if not os.path.isdir(d):
            probs.add(d, "-", "is not a folder: a drop-in folder holds NAME.d/*.toml drop-ins")
            continue
        for n in list_folder(d, probs, "drop-in folders (NAME.d)") or ():
            if not n.endswith(".d") or n == ".d":
                continue
            sub = d / n
            if not os.path.isdir(sub):
                why = file_problem(sub, "a drop-in folder")
                probs.add(sub, "-", (why or "is a file, not a folder")
                          + f": drop-ins for unit {n[:-2]!r} go in a folder {n}/ of *.toml files")
                continue
            if n[:-2] in names:
                continue
            try:
                orphan = any(x.endswith(".toml") for x in os.listdir(sub))
            except OSError as e:
                probs.add(sub, "-", f"cannot list this drop-in folder: {e.strerror or e}")
                continue
            if orphan:
                probs.add(sub, "-", f"drop-in folder for unit {n[:-2]!r}, which does not exist")


class UnitRead(NamedTuple):
    data: dict[str, Any]          # the unit file with the drop-ins that always apply merged in
    sources: tuple[Path, ...]
    origins: dict[str, Path]
    parts: list[DropinPart]       # every drop-in, in order
    base: dict[str, Any]          # the unit file alone


def read_unit(path: Path, dropin_dirs: Sequence[Path], probs: Problems) -> UnitRead | None:
    """A unit file with its drop-ins merged over it (:class:`UnitRead`); None if the unit file cannot be read. ``data`` has the drop-ins that always apply merged in; ``parts`` lists every drop-in in the
    order it applies (:func:`merge_parts` merges them again for a plan, skipping the conditional ones whose
    ``[when]`` does not match). ``sources`` are the files applied, in order; ``origins`` maps a key to the drop-in
    that wrote it last (keys the unit file wrote are not in it). A drop-in that cannot be read (or a folder that
    cannot be listed) is reported and skipped.

    A drop-in with a top-level ``[when]`` table is *conditional*: that table is its condition (the unit's own
    ``[when]`` is not changed by it), checked against the plan's facts like a unit's."""
    base = read_toml(path, probs)
    if base is None:
        return None
    data = base
    sources = [path]
    origins: dict[str, Path] = {}
    parts: list[DropinPart] = []
    for d in dropin_dirs:
        folder = d / f"{path.stem}.d"
        if not os.path.isdir(folder):   # not there, or not a folder (check_dropin_folders reports that)
            continue
        for n in list_folder(folder, probs, f"drop-ins for unit {path.stem!r}") or ():
            if not n.endswith(".toml"):
                continue
            dp = folder / n
            why = file_problem(dp, "a drop-in file")
            if why is not None:
                probs.add(dp, "-", why)
                continue
            over = read_toml(dp, probs)
            if over is None:
                continue
            when = over.pop("when", None)
            parts.append(DropinPart(dp, when, over))
            if when is None:
                record_origins(origins, data, over, dp)
                data = merge(data, over)
                sources.append(dp)
    return UnitRead(data, tuple(sources), origins, parts, base)


def merge_parts(base: dict[str, Any], parts: Sequence[DropinPart], applies: Callable[[DropinPart], bool]
                ) -> tuple[dict[str, Any], tuple[Path, ...], dict[str, Path]]:
    """``base`` (the unit file) with the ``parts`` that ``applies`` accepts merged over it, in order:
    ``(data, sources, origins)`` as :func:`read_unit` gives them."""
    data = base
    sources: list[Path] = []
    origins: dict[str, Path] = {}
    for part in parts:
        if applies(part):
            record_origins(origins, data, dict(part.data), part.file)
            data = merge(data, dict(part.data))
            sources.append(part.file)
    return data, tuple(sources), origins
