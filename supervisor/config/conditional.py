"""Conditional drop-ins: ``NAME.d/*.toml`` files with a top-level ``[when]`` of their own, applied only in the plans
whose facts match it (``services.d/sanic.d/cloud.toml`` with ``[when] llm_api = "cloud"``).

One mechanism, strict: the condition is checked as a unit's ``[when]`` is (known facts, their types and values;
``FILE: when.KEY: message`` naming the drop-in), and every conditional drop-in is checked merged over its unit
at ``check`` time whatever the plan, so a mistake in one that the current plan does not use is still reported.
The plan merges the unit again with the drop-ins that match (:func:`supervisor.plan.dropins.apply_conditionals`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from supervisor.config.files import merge_parts
from supervisor.config.reader import Reader
from supervisor.config.spec import Conditional, DropinPart, UnitSpec
from supervisor.config.unit import load_unit, load_when
from supervisor.errors import Problems

__all__ = ["with_conditionals", "unit_with"]


def with_conditionals(unit: UnitSpec, base: dict[str, Any], parts: list[DropinPart], probs: Problems) -> UnitSpec:
    """``unit`` (loaded with the drop-ins that always apply) with its conditional drop-ins attached, each one's
    ``[when]`` validated and each one checked merged over the unit; problems go to ``probs``, once each."""
    conditional = [p for p in parts if p.when is not None]
    if not conditional:
        return unit
    when: dict[Path, Mapping[str, tuple[object, ...]]] = {}
    for part in conditional:
        n0 = len(probs.items)
        if not isinstance(part.when, dict):
            probs.add(part.file, "when", "expected a table: [when] with the plan facts this drop-in applies in")
            continue
        cond = load_when(Reader(probs, part.file, {"when": part.when}, "", {"when"}))
        if len(probs.items) > n0:
            continue
        if not cond:
            probs.add(part.file, "when", "an empty [when] matches every plan: remove it to apply the drop-in always")
            continue
        when[part.file] = cond
        seen = set(probs.items)
        scratch = Problems()
        unit_with(unit, Conditional(MappingProxyType(base), tuple(parts), when), {part.file}, scratch)
        for problem in scratch.items:   # what the unit alone has is reported already
            if problem not in seen and problem.file == str(part.file):
                probs.items.append(problem)
                seen.add(problem)
    return dataclasses.replace(unit, conditional=Conditional(MappingProxyType(base), tuple(parts),
                                                              MappingProxyType(when)))


def unit_with(unit: UnitSpec, cond: Conditional, applied: set[Path], probs: Problems) -> UnitSpec:
    """``unit`` merged again from its unit file and drop-ins, the conditional ones only when in ``applied``."""
    data, sources, origins = merge_parts(dict(cond.base), cond.parts,
                                         lambda p: p.when is None or p.file in applied)
    loaded = load_unit(unit.name, unit.file, data, probs, (unit.file, *sources), origins)
    return dataclasses.replace(loaded, conditional=cond)
