"""The first stage of a plan: each unit merged again with the conditional drop-ins whose ``[when]`` matches the
plan's facts (:mod:`supervisor.config.conditional`), and for each unit what applied and why, for ``qasup plan``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from supervisor.config.conditional import unit_with
from supervisor.config.spec import Config, UnitSpec
from supervisor.errors import Problems
from supervisor.records import dataclass

__all__ = ["DropinUse", "apply_conditionals", "match_facts"]


@dataclass(frozen=True)
class DropinUse:
    """One conditional drop-in of a unit in this plan: applied or not, and why (``llm_api is cloud``)."""

    file: Path
    applied: bool
    reason: str


def apply_conditionals(config: Config, facts: Mapping[str, object], probs: Problems
                       ) -> tuple[Config, dict[str, tuple[DropinUse, ...]]]:
    """``config`` with every unit that has conditional drop-ins merged again for ``facts``; problems of a
    combination (rare: each drop-in was checked alone at load time) go to ``probs``."""
    uses: dict[str, tuple[DropinUse, ...]] = {}
    units: dict[str, UnitSpec] = {}
    changed = False
    for name, u in config.units.items():
        cond = u.conditional
        if cond is None:
            units[name] = u
            continue
        found = []
        for file, when in cond.when.items():
            ok, why = match_facts(when, facts)
            found.append(DropinUse(file, ok, why))
        uses[name] = tuple(found)
        applied = {d.file for d in found if d.applied}
        if not applied:
            units[name] = u
            continue
        seen = set(probs.items)
        scratch = Problems()
        units[name] = unit_with(u, cond, applied, scratch)
        probs.items.extend(p for p in scratch.items if p not in seen)
        changed = True
    if not changed:
        return config, uses
    return dataclasses.replace(config, units=MappingProxyType(units)), uses


def match_facts(when: Mapping[str, tuple[object, ...]], facts: Mapping[str, object]) -> tuple[bool, str]:
    """Whether ``facts`` match a ``[when]`` table (every key; a key's list: any of its values), and why."""
    why = []
    for key, accepted in when.items():
        actual = facts.get(key)
        shown = _show(actual)
        if actual not in accepted:
            return False, f"{key} is {shown}, not {' or '.join(_show(a) for a in accepted)}"
        why.append(f"{key} is {shown}")
    return True, ", ".join(why)


def _show(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)
