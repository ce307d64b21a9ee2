"""Checks across units that hold in every plan: dependencies on names that nothing defines, and ``provides``
entries that are the name of another unit.

The checks that depend on the plan (a dependency disabled in it, two enabled providers, cycles, ``${NAME}``)
are the plan's: :mod:`supervisor.plan.stages` and :mod:`supervisor.plan.resolve`.
"""

from __future__ import annotations

import dataclasses

from supervisor.config.reader import closest
from supervisor.config.spec import UnitSpec
from supervisor.errors import Problems

__all__ = ["check_static"]


def check_static(units: dict[str, UnitSpec], probs: Problems, broken: set[str]) -> None:
    """Report unknown dependencies (``broken``: units whose file could not be read still count as known)
    and ``provides`` clashes; a clashing ``provides`` entry is dropped from its unit (in ``units``), so that
    the plan does not report it again as two providers."""
    known = set(units) | broken
    for u in units.values():
        known.update(u.provides)
    for u in units.values():
        for key in ("requires", "after", "restart_with"):
            for dep in getattr(u, key):
                if dep not in known:
                    hint = closest(dep, known)
                    probs.add(u.file_of(key), key, f"unknown service {dep!r}: no unit is named so or provides it"
                              + (f" (did you mean {hint!r}?)" if hint else ""))
    for name, u in list(units.items()):
        clash = [p for p in u.provides if p in units and p != u.name]
        for p in clash:
            probs.add(u.file_of("provides"), "provides", f"{p!r} is the name of another unit")
        if clash:
            units[name] = dataclasses.replace(u, provides=tuple(p for p in u.provides if p not in clash))
