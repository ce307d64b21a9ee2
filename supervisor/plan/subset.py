"""The part of a stack this machine runs: ``up|check|plan --only NAMES`` / ``--except NAMES`` and external units.

One stack (the same ``services.d``) can run split across machines, one qasup on each. :func:`place` sorts the
plan's enabled units into three sets (:mod:`supervisor.plan.result`'s placements):

* ``here``: the subset (``--only``'s names, or every enabled unit but ``--except``'s): started and supervised here;
* ``external``: waited on here through its own ``[ready]`` (and ``[live]``) probes: every ``external = true``
  unit in the plan (and in the subset), and each unit outside the subset that a unit of the subset ``requires``,
  is ``after`` or names in ``restart_with`` (direct edges only: what *that* unit needs is not followed);
* ``elsewhere``: the other enabled units, which other machines run: not in this qasup's graph (state
  ``disabled``, with the reason ``not run here``).

The subset is taken among the plan's enabled units: an unknown name, or one that ``[when]``/``enabled`` leaves out
of this plan, is a :class:`SubsetError` (a usage error, exit 2); a provided name (``llm``) means its enabled
provider. A unit outside the subset that must be waited on needs a ``[ready]`` check that can run from here
(http, tcp or exec; no log check, no ``notify``): else a problem ``FILE: ready: NAME is outside --only and needs
an http, tcp or exec check to be waited on from here``. Its ``[live]`` keeps the checks that can run from here
(a log or watchdog check is dropped, with a plan message). Units outside the subset do not count for this
machine's GPUs: no free-memory pre-flight, no loader order, no ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import field
from typing import Any

from supervisor.config.reader import closest
from supervisor.config.spec import Config, LiveSpec, LogSpec, RestartSpec, StopSpec, UnitSpec
from supervisor.errors import Problems
from supervisor.plan.graph import Graph
from supervisor.plan.result import ELSEWHERE, EXTERNAL, HERE, ServicePlan, Subset
from supervisor.plan.stages import Wiring
from supervisor.records import dataclass

__all__ = ["ONLY_ENV", "EXCEPT_ENV", "Placement", "SubsetError", "apply", "external_spec", "place", "split_names",
           "subset_from"]

ONLY_ENV = "QASUP_ONLY"
EXCEPT_ENV = "QASUP_EXCEPT"


class SubsetError(ValueError):
    """A bad ``--only``/``--except`` (unknown or disabled name, both given, nothing left): a usage error."""


def split_names(values: Iterable[str]) -> tuple[str, ...]:
    """``--only a,b --only c`` (or ``QASUP_ONLY="a, b"``) to ``("a", "b", "c")``: comma lists, spaces and
    repeats dropped, the order kept."""
    return tuple(dict.fromkeys(n.strip() for v in values for n in v.split(",") if n.strip()))


def subset_from(only: tuple[str, ...], exclude: tuple[str, ...], environ: Mapping[str, str]) -> Subset:
    """The subset asked for: the flags, else ``$QASUP_ONLY`` / ``$QASUP_EXCEPT`` (a flag wins over both)."""
    if only and exclude:
        raise SubsetError("--only and --except cannot be used together: name what runs here, or what does not")
    if only or exclude:
        return Subset(only, exclude, "--only" if only else "--except")
    env_only, env_except = split_names([environ.get(ONLY_ENV, "")]), split_names([environ.get(EXCEPT_ENV, "")])
    if env_only and env_except:
        raise SubsetError(f"${ONLY_ENV} and ${EXCEPT_ENV} cannot both be set: name what runs here, or what does not")
    return Subset(env_only, env_except, ONLY_ENV if env_only else EXCEPT_ENV if env_except else "")


@dataclass(frozen=True)
class Placement:
    """Where each enabled unit of the plan runs (see the module's text)."""

    here: frozenset[str]
    external: Mapping[str, tuple[str, ...]]    # name -> the units here that need it (empty: external = true)
    elsewhere: frozenset[str]
    outside: frozenset[str] = field(default_factory=frozenset)   # external ones outside the subset


def _outside_phrase(subset: Subset) -> str:
    return f"outside {subset.source}" if subset.only else f"left out by {subset.source}"


def _named(subset: Subset, config: Config, services: Mapping[str, ServicePlan]) -> list[str]:
    """The subset's names as enabled unit names; every bad one reported in one SubsetError."""
    names = subset.only or subset.exclude
    if not names:
        raise SubsetError(f"{subset.source} names no unit")
    units = config.units
    provided: dict[str, list[str]] = {}
    for n, u in units.items():
        for p in u.provides:
            provided.setdefault(p, []).append(n)
    out: list[str] = []
    errors: list[str] = []
    for name in names:
        if name in units:
            candidates = [name]
        elif name in provided:
            candidates = [n for n in provided[name] if services[n].enabled] or provided[name]
        else:
            hint = closest(name, set(units) | set(provided))
            errors.append(f"unknown service {name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
            continue
        n = candidates[0]
        if not services[n].enabled:
            what = f"{name!r}" if name == n else f"{name!r} (provided by {', '.join(candidates)})"
            why = "; ".join(f"{c}: {services[c].reason}" for c in candidates) if name != n else services[n].reason
            errors.append(f"{what} is disabled in this plan ({why}), so it cannot be "
                          + ("run here" if subset.only else "left out"))
            continue
        out.append(n)
    if errors:
        raise SubsetError(f"{subset.source}: " + "; ".join(errors))
    return list(dict.fromkeys(out))


def place(subset: Subset, config: Config, services: Mapping[str, ServicePlan], wiring: Wiring) -> Placement:
    """Sort the plan's enabled units into here / external / elsewhere. Raises :class:`SubsetError`."""
    enabled = {n for n, s in services.items() if s.enabled}
    explicit = {n for n in enabled if config.units[n].external}
    if not subset:
        return Placement(frozenset(enabled - explicit), {n: () for n in sorted(explicit)}, frozenset())
    named = set(_named(subset, config, services))
    chosen = named if subset.only else enabled - named
    if not chosen:
        raise SubsetError(f"{subset.source} leaves no unit of this plan to run here")
    needed: dict[str, set[str]] = {}
    for n in sorted(chosen):
        for edges in (wiring.requires, wiring.after, wiring.restart_with):
            for dep in edges.get(n, ()):
                if dep not in chosen:
                    needed.setdefault(dep, set()).add(n)
    external: dict[str, tuple[str, ...]] = {n: () for n in sorted(chosen & explicit)}
    external.update({n: tuple(sorted(by)) for n, by in sorted(needed.items())})
    return Placement(frozenset(chosen - explicit), external, frozenset(enabled - chosen - set(needed)),
                     frozenset(needed))


def check_probes(subset: Subset, config: Config, placement: Placement, probs: Problems) -> None:
    """A unit outside the subset that is waited on needs a ``[ready]`` check that can run from here."""
    for n in sorted(placement.outside):
        if config.units[n].external:   # its [ready] was checked with the unit
            continue
        r = config.units[n].ready
        checkable = any(x is not None for x in (r.http, r.tcp, r.exec))
        unseen = [w for w, has in (("a log check", r.log is not None), ("notify = true", r.notify)) if has]
        if checkable and not unseen:
            continue
        if not r.has_checks:
            detail = "it has no [ready] check"
        elif not checkable:
            detail = f"its [ready] has only {' and '.join(unseen)}, which only the machine that runs it sees"
        else:
            detail = f"its [ready] also has {' and '.join(unseen)}, which only the machine that runs it sees"
        by = placement.external[n]
        key = "ready.log" if r.log is not None else "ready.notify" if r.notify else "ready"
        probs.add(config.units[n].file_of(key), "ready",
                  f"{n} is {_outside_phrase(subset)} and needs an http, tcp or exec check to be waited on from here "
                  f"({', '.join(by)} need{'s' if len(by) == 1 else ''} it; {detail})")


def _live_from_here(unit: UnitSpec, messages: list[str]) -> LiveSpec | None:
    """``[live]`` without the checks that only the machine running the unit can make (log, watchdog)."""
    lv = unit.live
    if lv is None or (lv.log is None and lv.watchdog is None):
        return lv
    dropped = " and ".join(w for w, has in (("log", lv.log is not None), ("watchdog", lv.watchdog is not None)) if has)
    kept = dataclasses.replace(lv, log=None, watchdog=None)
    if not kept.has_checks:
        messages.append(f"{unit.name} runs elsewhere: its [live] has only a {dropped} check, which cannot run from "
                        "here: it is not watched once ready")
        return None
    messages.append(f"{unit.name} runs elsewhere: its [live] {dropped} check cannot run from here and is left out")
    return kept


def external_spec(unit: UnitSpec, live: LiveSpec | None) -> UnitSpec:
    """``unit`` as an external unit: its probes (and environment, for exec checks and ``${NAME}``) only."""
    return dataclasses.replace(
        unit, external=True, command=(), prepare=None, log=LogSpec(), on_log=(), requires_paths=(), gpu=None,
        vram_mib=None, type=UnitSpec.type, pid_file=None, user=None, group=None, groups=(), restart_with=(),
        requires=(), after=(), live=live, stop=StopSpec(), restart=RestartSpec())


def apply(subset: Subset, config: Config, services: dict[str, ServicePlan], wiring: Wiring, probs: Problems,
          messages: list[str]) -> tuple[Config, Wiring, Placement]:
    """Place the units (:func:`place`), check what is waited on from here, and narrow the plan to this machine:
    ``services`` updated in place, the config with outside units as external specs, the wiring and graph of the
    units here and those waited on. Raises :class:`SubsetError`."""
    placement = place(subset, config, services, wiring)
    check_probes(subset, config, placement, probs)
    no_gpu: dict[str, Any] = {"gpu_ids": (), "env": {}, "vram_mib": None}
    outside = _outside_phrase(subset)
    units = dict(config.units)
    for n in placement.external:
        s = services[n]
        if n in placement.outside:
            by = placement.external[n]
            units[n] = external_spec(units[n], _live_from_here(units[n], messages))
            services[n] = dataclasses.replace(s, placement=EXTERNAL, needed_by=placement.external[n], **no_gpu,
                                              reason=f"{outside}: runs elsewhere, waited on here ({', '.join(by)} "
                                                     f"need{'s' if len(by) == 1 else ''} it)")
        else:
            services[n] = dataclasses.replace(s, placement=EXTERNAL, **no_gpu)
    for n in placement.elsewhere:
        services[n] = dataclasses.replace(services[n], enabled=False, placement=ELSEWHERE, **no_gpu,
                                          reason=f"not run here: {outside} (another machine runs it)")
    for n in placement.here:
        services[n] = dataclasses.replace(services[n], placement=HERE)
    if not subset:
        return config, wiring, placement
    nodes = set(placement.here) | set(placement.external)
    keep = nodes - placement.outside   # a unit waited on from here: its own edges are the other machine's

    def narrowed(edges: Mapping[str, list[str]]) -> dict[str, list[str]]:
        return {n: [d for d in deps if d in nodes] for n, deps in edges.items() if n in keep}

    req, aft, rw = narrowed(wiring.requires), narrowed(wiring.after), narrowed(wiring.restart_with)
    graph = Graph.build(nodes, req, aft, rw)
    return Config(config.stack, units), Wiring(nodes, req, aft, graph, rw), placement
