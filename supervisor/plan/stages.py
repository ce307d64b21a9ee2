"""The stages of building a plan, in the order :func:`supervisor.plan.build.make_plan` runs them:

1. :func:`select_services`: which units this plan enables and why (``enabled``, ``[when]`` against the facts),
   and the GPUs each gets (``gpu`` role -> ids, ``CUDA_VISIBLE_DEVICES``);
2. :func:`wire`: dependency names to the enabled units that provide them, the graph, and its problems
   (two enabled providers, a required unit disabled in this plan, cycles);
3. :func:`check_free_memory`: ``vram_mib`` against each GPU's free memory;
4. :func:`order_gpu_loaders` and :func:`with_waves`: loaders sharing a GPU start one after another, largest
   first; each service's wave in the start order;
5. :func:`resolve_enabled`: every enabled unit's ``${NAME}`` expanded and its ``requires_paths`` checked; no two
   of them writing one log file, none tailing a unit's log file (:func:`check_log_files`).

Configuration problems go to the collector (exit 2); reasons the plan cannot run on this machine are returned
as error lines (exit 1). Pure: nothing here starts or writes anything.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.config.spec import Config, UnitSpec
from supervisor.errors import Problems
from supervisor.plan.dropins import match_facts
from supervisor.plan.gpu import GpuInfo
from supervisor.plan.graph import Graph
from supervisor.plan.qanything_inputs import PlanInputs
from supervisor.plan.resolve import ResolvedUnit, resolve_unit_anyway
from supervisor.plan.result import HERE, ServicePlan
from supervisor.records import dataclass

if TYPE_CHECKING:
    from supervisor.plan.qanything import PlanOutcome

__all__ = ["GpuIds", "Wiring", "check_free_memory", "check_log_files", "gpu_ids", "match_when", "order_gpu_loaders",
           "resolve_enabled", "select_services", "wire", "with_waves"]


# --------------------------------------------------------------------------- 1. selection


@dataclass(frozen=True)
class GpuIds:
    """The GPU ids the ``gpu`` roles map to: ``llm`` -> ``llm``, ``embed`` -> ``embed``, ``all`` -> ``all``."""

    all: tuple[int, ...]
    llm: int
    embed: int


def gpu_ids(outcome: PlanOutcome | None, inputs: PlanInputs) -> GpuIds:
    """QAnything's gpu_id1/gpu_id2 when its rules ran; else the ``device_id`` input's ids (first, second)."""
    device_ids: tuple[int, ...] = tuple(outcome.device_ids) if outcome else _ids(inputs.device_id)
    gpu1 = outcome.gpu_id1 if outcome and outcome.gpu_id1 is not None else (device_ids[0] if device_ids else 0)
    gpu2 = outcome.gpu_id2 if outcome and outcome.gpu_id2 is not None else (
        device_ids[1] if len(device_ids) > 1 else gpu1)
    return GpuIds(device_ids, gpu1, gpu2)


def _ids(device_id: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(device_id).split(",") if x.strip())
    except ValueError:
        return (0,)


def match_when(unit: UnitSpec, facts: Mapping[str, object]) -> tuple[bool, str]:
    """Whether the plan enables ``unit``, and why in words (``llm_api is local, same_gpu is false``)."""
    if not unit.enabled:
        return False, "enabled = false"
    if not unit.when:
        return True, "always"
    return match_facts(unit.when, facts)


def select_services(config: Config, facts: Mapping[str, object], ids: GpuIds) -> dict[str, ServicePlan]:
    """Every unit's :class:`ServicePlan`, in the config's order: enabled or not, why, and its GPUs."""
    services: dict[str, ServicePlan] = {}
    for name, u in config.units.items():
        ok, reason = match_when(u, facts)
        gids: tuple[int, ...] = ()
        genv: dict[str, str] = {}
        if u.gpu == "llm":
            gids = (ids.llm,)
        elif u.gpu == "embed":
            gids = (ids.embed,)
        elif u.gpu == "all":
            gids = ids.all
        if u.gpu:
            # NVML numbers GPUs in PCI order; CUDA, by default, fastest first: make them agree
            genv["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            genv["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gids))
        services[name] = ServicePlan(name, ok, reason, gpu_ids=gids, env=genv, vram_mib=u.vram_mib,
                                     placement=HERE if ok else None)   # --only/--except: plan/subset.py
    return services


def enabled_names(services: Mapping[str, ServicePlan]) -> set[str]:
    return {n for n, s in services.items() if s.enabled}


# --------------------------------------------------------------------------- 2. dependencies


@dataclass
class Wiring:
    """The dependency edges among enabled units (by provider) and the graph built from them."""

    enabled: set[str]
    requires: dict[str, list[str]]
    after: dict[str, list[str]]
    graph: Graph
    restart_with: dict[str, list[str]] = field(default_factory=dict)   # also after edges (in the graph)


def wire(config: Config, services: Mapping[str, ServicePlan], probs: Problems) -> Wiring:
    """Names -> providers among enabled units (two enabled providers of a name are a problem), the edges
    ``requires`` and ``after`` give (``restart_with`` names are ``after`` edges too), and the graph; a
    ``requires`` on a unit this plan disables, and a cycle, are problems too."""
    enabled = enabled_names(services)
    providers: dict[str, list[str]] = {}
    all_providers: dict[str, list[str]] = {}     # among all units, for messages
    for name, u in config.units.items():
        for p in {name, *u.provides}:
            all_providers.setdefault(p, []).append(name)
            if name in enabled:
                providers.setdefault(p, []).append(name)
    for p, who in providers.items():
        if len(who) > 1:
            for n in who:
                probs.add(config.units[n].file_of("provides"), "provides",
                          f"{p!r} is provided by {len(who)} enabled units ({', '.join(sorted(who))}); "
                          "at most one may be enabled in a plan")
    req: dict[str, list[str]] = {}
    aft: dict[str, list[str]] = {}
    rw: dict[str, list[str]] = {}
    for name in sorted(enabled):
        u = config.units[name]
        for dep in u.requires:
            found = providers.get(dep)
            if found:
                req.setdefault(name, []).append(found[0])
            elif dep in all_providers:
                dis = ", ".join(f"{d} ({services[d].reason})" for d in sorted(all_providers[dep]))
                probs.add(u.file_of("requires"), "requires", f"requires {dep!r}, but it is disabled in this plan: "
                          f"{dis}; use `after` for an optional dependency")
        for dep in u.after:
            for first in providers.get(dep, [])[:1]:
                aft.setdefault(name, []).append(first)
        for dep in u.restart_with:   # a name disabled in this plan: nothing to restart with
            for first in providers.get(dep, [])[:1]:
                rw.setdefault(name, []).append(first)
    graph = Graph.build(enabled, req, aft, rw)
    for cyc in graph.cycles():
        unit = config.units[cyc[0]]
        key = "requires" if cyc[1] in graph.requires.get(cyc[0], ()) else (
            "restart_with" if cyc[1] in rw.get(cyc[0], ()) and cyc[1] not in aft.get(cyc[0], ()) else "after")
        probs.add(unit.file_of(key), key, "dependency cycle: " + " -> ".join(cyc))
    return Wiring(enabled, req, aft, graph, rw)


# --------------------------------------------------------------------------- 3-4. GPUs and order


def gpu_loaders(services: Mapping[str, ServicePlan]) -> dict[int, list[str]]:
    """GPU id -> the enabled services with a ``vram_mib`` estimate on it (sorted by name)."""
    loaders: dict[int, list[str]] = {}
    for name in sorted(enabled_names(services)):
        s = services[name]
        if s.vram_mib:
            for d in s.gpu_ids:
                loaders.setdefault(d, []).append(name)
    return loaders


def check_free_memory(loaders: Mapping[int, list[str]], services: Mapping[str, ServicePlan],
                      gpus: Sequence[GpuInfo]) -> tuple[list[str], list[str]]:
    """``(errors, messages)``: each GPU's loaders need no more than its free memory; a GPU missing from the
    inventory is an error, or only a message when there is no inventory at all."""
    errors: list[str] = []
    messages: list[str] = []
    by_index = {g.index: g for g in gpus}
    for d, names in sorted(loaders.items()):
        g = by_index.get(d)
        need = sum(services[n].vram_mib or 0 for n in names)
        if g is None:
            if gpus:
                errors.append(f"GPU {d} is not in the inventory ({', '.join(str(i) for i in by_index)}), "
                              f"yet {', '.join(names)} need it")
            else:
                messages.append(f"no GPU inventory: the memory of {', '.join(names)} on GPU {d} is not checked")
            continue
        if need > g.memory_free_mib:
            parts = ", ".join(f"{n} ({services[n].vram_mib} MiB)" for n in names)
            errors.append(f"GPU {d} ({g.name}) has {g.memory_free_mib} MiB free of {g.memory_total_mib} MiB; "
                          f"{parts} need {need} MiB: free the GPU or lower the estimates")
    return errors, messages


def order_gpu_loaders(wiring: Wiring, loaders: Mapping[int, list[str]], services: Mapping[str, ServicePlan]
                      ) -> tuple[Graph, tuple[tuple[str, str], ...]]:
    """The graph with an ``after`` edge between loaders that share a GPU (largest first, never against an
    existing dependency path), and those edges. The graph must be acyclic; ``wiring.after`` gains the edges."""
    graph = wiring.graph
    gpu_edges: list[tuple[str, str]] = []
    for _, names in sorted(loaders.items()):
        order = _loader_order(graph, names, services)
        added = False
        for a, b in zip(order, order[1:], strict=False):
            if (a, b) not in gpu_edges and not graph.reaches(a, b) and not graph.reaches(b, a):
                gpu_edges.append((a, b))
                wiring.after.setdefault(b, []).append(a)
                added = True
        if added:   # a chain on one GPU cannot close a cycle; rebuild once per GPU
            graph = Graph.build(wiring.enabled, wiring.requires, wiring.after, wiring.restart_with)
    return graph, tuple(gpu_edges)


def _loader_order(graph: Graph, names: list[str], services: Mapping[str, ServicePlan]) -> list[str]:
    """Largest first, but never against an existing dependency path."""
    pending = sorted(names, key=lambda n: (-(services[n].vram_mib or 0), n))
    out: list[str] = []
    while pending:
        for cand in pending:
            if not any(graph.reaches(cand, other) for other in pending if other != cand):
                out.append(cand)
                pending.remove(cand)
                break
        else:  # cannot happen in an acyclic graph
            out.extend(pending)
            break
    return out


def with_waves(services: dict[str, ServicePlan], graph: Graph) -> None:
    """Give each enabled service (in ``services``) its wave and its edges in the (acyclic) graph."""
    for k, wave in enumerate(graph.waves()):
        for n in wave:
            services[n] = replace(services[n], enabled=True, wave=k, requires=graph.requires[n],
                                  after=graph.after[n])


# --------------------------------------------------------------------------- 5. resolution


def resolve_enabled(config: Config, services: Mapping[str, ServicePlan], plan_env: Mapping[str, str],
                    env_out: Mapping[str, str], environ: Mapping[str, str], probs: Problems, *,
                    check_paths: bool) -> tuple[dict[str, ResolvedUnit], list[str]]:
    """Every enabled unit resolved (an unknown ``${NAME}`` is a problem) and, with ``check_paths``, the
    ``requires_paths`` that do not exist (``PATH (required by NAME)``)."""
    resolved: dict[str, ResolvedUnit] = {}
    logs: dict[str, LogPaths] = {}
    missing: list[str] = []
    env_cache: dict[Any, Any] = {}
    for n in sorted(enabled_names(services)):
        n0 = len(probs.items)
        r = resolve_unit_anyway(config.stack, config.units[n], plan_env, services[n].env, probs, environ,
                                env_out, env_cache)
        bad = {p.key for p in probs.items[n0:]}   # a path that could not be expanded is not compared
        if not r.external:   # an external unit's log file is only a would-be path: nothing writes it
            logs[n] = (None if "log.file" in bad else r.log_file, () if "log.tail" in bad else r.tail)
        if bad:
            continue
        resolved[n] = r
        if check_paths:
            missing += [f"{p} (required by {n})" for p in r.requires_paths if not os.path.exists(p)]
    check_log_files(config, logs, probs)
    return resolved, missing


LogPaths = tuple[Path | None, tuple[Path, ...]]
"""A resolved unit's log file (None: unknown) and ``[log] tail`` paths."""


def _is_device(path: Path) -> bool:
    """Whether ``path`` is there and not a regular file or folder (``/dev/null``, ``/dev/full``, a FIFO): units
    may share one, it has no lines to tear and is never rotated."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


def check_log_files(config: Config, logs: Mapping[str, LogPaths], probs: Problems) -> None:
    """Two enabled units writing one log file (compared as resolved absolute paths: symbolic links and ``..``
    followed), and a ``[log] tail`` path that is a unit's log file: problems naming both units. A device such as
    ``/dev/null`` may be shared."""
    writers: dict[str, list[str]] = {}
    for n in sorted(logs):
        f = logs[n][0]
        if f is not None and not _is_device(f):
            writers.setdefault(os.path.realpath(f), []).append(n)
    for path, names in writers.items():
        if len(names) < 2:
            continue
        explicit = [n for n in names if config.units[n].log.file]   # report where a [log] file was written
        at = config.units[(explicit or names)[-1]]
        probs.add(at.file_of("log.file"), "log.file",
                  f"{path} is the log file of {len(names)} units ({', '.join(names)}): "
                  "each unit needs its own [log] file (two writers interleave and tear lines, and rotate each "
                  "other's files)")
    for n in sorted(logs):
        u = config.units[n]
        for t in logs[n][1]:
            for owner in writers.get(os.path.realpath(t), ()):
                if owner == n:
                    why = f"is {n}'s own log file: its lines are scanned already, as qasup writes them"
                else:
                    why = (f"is the log file of unit {owner!r} (qasup writes it): units {n!r} and {owner!r} would "
                           f"share it; to wait on {owner}, use requires or after and {owner}'s [ready]")
                probs.add(u.file_of("log.tail"), "log.tail", f"{t} {why}")
