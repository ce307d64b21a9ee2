"""The plan: from a validated config, the GPU inventory and the run.sh-style inputs to what will run.

It applies QAnything's start-up rules (:mod:`supervisor.plan.qanything`), each unit's ``enabled`` and ``[when]``,
maps ``gpu`` roles to ``CUDA_VISIBLE_DEVICES``, checks ``vram_mib`` against each GPU's *free* memory, orders
loaders that share a GPU (largest first), checks ``requires_paths``, resolves every enabled unit and builds the
dependency graph. Pure: it starts nothing and writes nothing (the engine writes the env file).

The QAnything rules are used when the stack opts in: a ``[plan]`` table in the stack file, a run.sh flag on the
command line, or a unit with a ``gpu`` role or a ``[when]`` table. Any other stack plans without them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from supervisor.config import dotenv
from supervisor.errors import Problems
from supervisor.plan.gpu import GpuInfo
from supervisor.plan.graph import Graph
from supervisor.plan.qanything import PlanInputs, PlanOutcome, decide
from supervisor.plan.resolve import ResolvedUnit, expand_banner, resolve_unit
from supervisor.config.spec import Config, UnitSpec

SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
NOT_SECRET = frozenset({"OFFCUT_TOKEN"})  # a token count, not a credential (interface.md shows it in clear)


def is_secret(key: str) -> bool:
    k = key.upper()
    return k not in NOT_SECRET and any(w in k for w in SECRET_WORDS)


def mask(env: Mapping[str, str]) -> dict[str, str]:
    return {k: ("***" if is_secret(k) else v) for k, v in env.items()}


@dataclass(frozen=True)
class ServicePlan:
    name: str
    enabled: bool
    reason: str
    wave: int | None = None
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    gpu_ids: tuple[int, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    vram_mib: int | None = None


@dataclass(frozen=True)
class Plan:
    config: Config
    inputs: PlanInputs
    outcome: PlanOutcome | None          # None when the stack does not use the QAnything rules
    gpus: tuple[GpuInfo, ...]
    feasible: bool
    error: str | None
    messages: tuple[str, ...]
    env: Mapping[str, str]               # written to the stack's env file (update or append)
    facts: Mapping[str, object]          # what [when] tables are matched against
    services: Mapping[str, ServicePlan]
    graph: Graph
    gpu_edges: tuple[tuple[str, str], ...]   # (first, then): loaders sharing a GPU, largest first
    resolved: Mapping[str, ResolvedUnit]
    banner: str
    lookup_extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> list[str]:
        return [n for n, s in self.services.items() if s.enabled]

    def to_json(self) -> dict[str, Any]:
        o = self.outcome
        out: dict[str, Any] = {"feasible": self.feasible, "error": self.error, "messages": list(self.messages)}
        keys = ("llm_api", "requested_backend", "runtime_backend", "model_name", "model_size", "gpu_id1",
                "gpu_id2", "tensor_parallel", "offcut_token", "ocr_use_gpu")
        for k in keys:
            out[k] = getattr(o, k) if o is not None else None
        out["uses_qanything_rules"] = o is not None
        out["gpus"] = [g.to_json() for g in self.gpus]
        out["env"] = mask(self.env)
        waves = self.graph.waves() if not self.graph.cycles() else []
        out["waves"] = waves
        out["gpu_order"] = [list(e) for e in self.gpu_edges]
        out["services"] = [
            {"name": s.name, "enabled": s.enabled, "reason": s.reason, "wave": s.wave,
             "requires": list(s.requires), "after": list(s.after), "gpu_ids": list(s.gpu_ids),
             "vram_mib": s.vram_mib, "env": mask(s.env)}
            for s in self.services.values()]
        return out


def uses_rules(config: Config, overrides: Mapping[str, object]) -> bool:
    return bool(overrides) or config.stack.has_plan_table or any(
        u.gpu or u.when for u in config.units.values())


def needs_gpu_inventory(config: Config, overrides: Mapping[str, object]) -> bool:
    """Whether the plan can use GPU facts: QAnything's rules, or a unit with a `vram_mib` to pre-flight.

    A stack without either never reads NVML (reading it costs ~3 MiB of the daemon's resident memory)."""
    return uses_rules(config, overrides) or any(u.vram_mib for u in config.units.values())


def plan_inputs(config: Config, overrides: Mapping[str, object]) -> PlanInputs:
    """[plan] defaults from the stack file, overridden by the command line's flags."""
    names = {f.name for f in fields(PlanInputs)}
    values = {k: v for k, v in config.stack.plan.items() if k in names}
    values.update({k: v for k, v in overrides.items() if k in names and v is not None})
    return PlanInputs(**values)


def _match_when(unit: UnitSpec, facts: Mapping[str, object]) -> tuple[bool, str]:
    if not unit.enabled:
        return False, "enabled = false"
    if not unit.when:
        return True, "always"
    why = []
    for key, accepted in unit.when.items():
        actual = facts.get(key)
        shown = _show(actual)
        if actual not in accepted:
            return False, f"{key} is {shown}, not {' or '.join(_show(a) for a in accepted)}"
        why.append(f"{key} is {shown}")
    return True, ", ".join(why)


def _show(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def make_plan(config: Config, overrides: Mapping[str, object], gpus: Sequence[GpuInfo], probs: Problems,
              environ: Mapping[str, str] | None = None, check_paths: bool = True) -> Plan:
    """Build the plan. Configuration problems go to ``probs`` (exit 2); infeasibility is in the result (exit 1).

    Raises :class:`supervisor.plan.qanything.PlanInputError` for invalid inputs (flags or [plan] values).
    """
    environ = dict(os.environ) if environ is None else environ
    stack = config.stack
    inputs = plan_inputs(config, overrides)
    rules = uses_rules(config, overrides)
    outcome = decide(inputs, gpus) if rules else None
    errors: list[str] = []
    messages: list[str] = list(outcome.messages) if outcome else []
    if outcome is not None and not outcome.feasible and outcome.error:
        errors.append(outcome.error)
    facts: Mapping[str, object] = outcome.when_facts() if outcome else {}
    env_out = dict(outcome.env()) if outcome else {}

    # The values ${USER_IP} and friends expand from, beyond what is written to the env file.
    existing = {}
    try:
        existing = dotenv.load(stack.path(stack.env_file))
    except (OSError, ValueError):
        pass
    user_ip = environ.get("USER_IP") or existing.get("USER_IP") or "localhost"
    lookup_extra = {"USER_IP": user_ip}
    plan_env = {**lookup_extra, **env_out}

    # Enabled units and their GPUs.
    device_ids: tuple[int, ...] = tuple(outcome.device_ids) if outcome else _ids(inputs.device_id)
    gpu1 = outcome.gpu_id1 if outcome and outcome.gpu_id1 is not None else (device_ids[0] if device_ids else 0)
    gpu2 = outcome.gpu_id2 if outcome and outcome.gpu_id2 is not None else (
        device_ids[1] if len(device_ids) > 1 else gpu1)
    services: dict[str, ServicePlan] = {}
    for name, u in config.units.items():
        ok, reason = _match_when(u, facts)
        ids: tuple[int, ...] = ()
        genv: dict[str, str] = {}
        if u.gpu == "llm":
            ids = (gpu1,)
        elif u.gpu == "embed":
            ids = (gpu2,)
        elif u.gpu == "all":
            ids = device_ids
        if u.gpu:
            # NVML numbers GPUs in PCI order; CUDA, by default, fastest first: make them agree
            genv["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            genv["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
        services[name] = ServicePlan(name, ok, reason, gpu_ids=ids, env=genv, vram_mib=u.vram_mib)
    enabled = {n for n, s in services.items() if s.enabled}

    # Names -> providers, among enabled units (duplicates are errors) and among all (for messages).
    providers: dict[str, list[str]] = {}
    all_providers: dict[str, list[str]] = {}
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
    for name in sorted(enabled):
        u = config.units[name]
        for dep in u.requires:
            who = providers.get(dep)
            if who:
                req.setdefault(name, []).append(who[0])
            elif dep in all_providers:
                dis = ", ".join(f"{d} ({services[d].reason})" for d in sorted(all_providers[dep]))
                probs.add(u.file_of("requires"), "requires", f"requires {dep!r}, but it is disabled in this plan: {dis}; "
                          "use `after` for an optional dependency")
        for dep in u.after:
            for who in providers.get(dep, [])[:1]:
                aft.setdefault(name, []).append(who)
    graph = Graph.build(enabled, req, aft)
    for cyc in graph.cycles():
        first = config.units[cyc[0]]
        key = "requires" if cyc[1] in graph.requires.get(cyc[0], ()) else "after"
        probs.add(first.file_of(key), key, "dependency cycle: " + " -> ".join(cyc))
    cyclic = bool(graph.cycles())

    # Free-memory pre-flight and GPU ordering.
    by_index = {g.index: g for g in gpus}
    loaders: dict[int, list[str]] = {}
    for name in sorted(enabled):
        s = services[name]
        if s.vram_mib:
            for d in s.gpu_ids:
                loaders.setdefault(d, []).append(name)
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
    gpu_edges: list[tuple[str, str]] = []
    if not cyclic:
        for d, names in sorted(loaders.items()):
            order = _loader_order(graph, names, services)
            added = False
            for a, b in zip(order, order[1:]):
                if (a, b) not in gpu_edges and not graph.reaches(a, b) and not graph.reaches(b, a):
                    gpu_edges.append((a, b))
                    aft.setdefault(b, []).append(a)
                    added = True
            if added:   # a chain on one GPU cannot close a cycle; rebuild once per GPU
                graph = Graph.build(enabled, req, aft)
        waves = graph.waves()
        for k, wave in enumerate(waves):
            for n in wave:
                s = services[n]
                services[n] = ServicePlan(n, True, s.reason, k, graph.requires[n], graph.after[n], s.gpu_ids,
                                          s.env, s.vram_mib)

    # Resolve every enabled unit (unknown ${NAME} are configuration problems) and check required paths.
    resolved: dict[str, ResolvedUnit] = {}
    missing: list[str] = []
    env_cache: dict = {}
    for n in sorted(enabled):
        r = resolve_unit(stack, config.units[n], plan_env, services[n].env, probs, environ, env_out, env_cache)
        if r is None:
            continue
        resolved[n] = r
        if check_paths:
            missing += [f"{p} (required by {n})" for p in r.requires_paths if not p.exists()]
    if missing:
        errors.append("missing paths: " + "; ".join(missing))
    banner = expand_banner(stack, plan_env, probs, environ)
    return Plan(config=config, inputs=inputs, outcome=outcome, gpus=tuple(gpus), feasible=not errors,
                error="; ".join(errors) or None, messages=tuple(messages), env=MappingProxyType(env_out),
                facts=MappingProxyType(dict(facts)), services=MappingProxyType(services), graph=graph,
                gpu_edges=tuple(gpu_edges), resolved=MappingProxyType(resolved), banner=banner,
                lookup_extra=MappingProxyType(lookup_extra))


def _ids(device_id: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(device_id).split(",") if x.strip())
    except ValueError:
        return (0,)


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
