"""Load ``qasup.toml`` and ``services.d/*.toml`` (with drop-ins) into a validated, immutable
:class:`~supervisor.config.spec.Config`: the entry point of the config layer.

Strict: unknown keys, wrong types, bad durations, sizes, regexes, signals and names are all reported, every
problem of a run at once, as ``FILE: KEY: message``. Whatever the input, the only exception that leaves
:func:`load_config` is :class:`~supervisor.errors.ConfigError`.

The stages: find and read the stack file (:mod:`.files`, :mod:`.stack`), read each unit with its drop-ins
(:mod:`.unit`), then the checks across units (:mod:`.checks`). Cross-unit checks that depend on the plan
(dependencies disabled in it, cycles, ``${NAME}``) are the plan's (:mod:`supervisor.plan`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import MappingProxyType

from supervisor.config.accounts import check_accounts
from supervisor.config.checks import check_static
from supervisor.config.conditional import with_conditionals
from supervisor.config.files import (
    STACK_FILE,
    check_dropin_folders,
    find_stack,
    list_unit_files,
    read_unit,
)
from supervisor.config.spec import Config, UnitSpec
from supervisor.config.stack import load_stack
from supervisor.config.unit import load_unit
from supervisor.errors import Problems
from supervisor.protocol import NAME_RE

__all__ = ["collect_config", "load_config"]


def load_config(config: Path | None = None, cwd: Path | None = None) -> Config:
    """Load and validate the whole stack. Raises ConfigError listing every problem."""
    probs = Problems()
    cfg = collect_config(config, cwd, probs)
    probs.raise_if_any()
    assert cfg is not None
    return cfg


def collect_config(config: Path | None, cwd: Path | None, probs: Problems) -> Config | None:
    """Load the stack, adding problems to ``probs`` instead of raising, so that later stages (the plan,
    ``${NAME}`` expansion) can report theirs in the same run. Units with problems are kept, with defaults
    in place of the bad values; None when not even the stack could be read."""
    try:
        return _load(config, Path(cwd or os.getcwd()), probs)
    except RecursionError:
        probs.add(config or STACK_FILE, "-", "nesting too deep")
        return None


def _load(config: Path | None, cwd: Path, probs: Problems) -> Config | None:
    root, file = find_stack(config, cwd)
    if config is not None and file is not None and not os.path.lexists(file):
        probs.add(file, "-", "no such file")
        return None
    stack = load_stack(root, file, probs)
    services_dir = stack.path(stack.services)
    try:
        is_dir = stat.S_ISDIR(os.stat(services_dir).st_mode)
    except PermissionError as e:
        probs.add(file or root, "stack.services", f"{services_dir} cannot be reached: {e.strerror}")
        return None
    except (OSError, ValueError):
        is_dir = False
    if not is_dir:
        probs.add(file or root, "stack.services", f"{services_dir} is not a folder of unit files")
        return None
    listed = list_unit_files(services_dir, probs)
    if listed is None:
        return None
    unit_files, broken = listed
    dropin_dirs = [services_dir] + [stack.path(d) for d in stack.dropins]
    check_dropin_folders(dropin_dirs, {p.stem for p in unit_files} | broken, probs)
    units: dict[str, UnitSpec] = {}
    for path in unit_files:
        name = path.stem
        if not NAME_RE.match(name):
            probs.add(path, "-", f"{name!r} is not a valid service name: use lowercase letters, digits, '_', '.' "
                                 "and '-' (at most 63 characters, starting with a letter or digit)")
            continue
        read = read_unit(path, dropin_dirs, probs)
        if read is None:
            broken.add(name)
            continue
        units[name] = load_unit(name, path, read.data, probs, read.sources, read.origins)
        if any(p.when is not None for p in read.parts):   # conditional drop-ins: the plan applies the matching
            units[name] = with_conditionals(units[name], read.base, read.parts, probs)
        check_accounts(units[name], probs)   # unknown users and groups (whether qasup may switch: at start)
    if not unit_files and not broken:
        probs.add(services_dir, "-", "no unit files (*.toml) here")
    check_static(units, probs, broken)
    return Config(stack=stack, units=MappingProxyType(units))
