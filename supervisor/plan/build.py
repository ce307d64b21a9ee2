"""The plan: from a validated config, the GPU inventory and the run.sh-style inputs to what will run.

:func:`make_plan` applies QAnything's start-up rules (:mod:`supervisor.plan.qanything`), then the stages of
:mod:`supervisor.plan.stages`: each unit's ``enabled`` and ``[when]``, ``gpu`` roles to ``CUDA_VISIBLE_DEVICES``,
the dependency graph, ``vram_mib`` against each GPU's *free* memory, loaders that share a GPU ordered (largest
first), every enabled unit resolved and its ``requires_paths`` checked. Pure: it starts nothing and writes
nothing (the engine writes the env file). :mod:`supervisor.plan.pipeline` is how the CLI gets a plan.

The QAnything rules are used when the stack opts in: a ``[plan]`` table in the stack file, a run.sh flag on the
command line, or a unit with a ``gpu`` role or a ``[when]`` table. Any other stack plans without them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from supervisor.config import dotenv
from supervisor.config.safefile import MAX_FILE_BYTES, FileRefused
from supervisor.config.spec import Config, StackSpec
from supervisor.errors import Problems
from supervisor.plan import stages
from supervisor.plan import subset as subsets
from supervisor.plan.dropins import apply_conditionals
from supervisor.plan.gpu import GpuInfo
from supervisor.plan.qanything_inputs import PlanInputs
from supervisor.plan.resolve import expand_banner
from supervisor.plan.result import Plan, Subset

__all__ = ["make_plan", "needs_gpu_inventory", "plan_inputs", "uses_rules"]


def uses_rules(config: Config, overrides: Mapping[str, object]) -> bool:
    """Whether QAnything's rules apply: a run.sh flag, a ``[plan]`` table, or a unit with ``gpu`` or ``[when]``."""
    return bool(overrides) or config.stack.has_plan_table or any(
        u.gpu or u.when or u.conditional for u in config.units.values())


def needs_gpu_inventory(config: Config, overrides: Mapping[str, object]) -> bool:
    """Whether the plan can use GPU facts: QAnything's rules, or a unit with a `vram_mib` to pre-flight.

    A stack without either never reads NVML (reading it costs ~3 MiB of the daemon's resident memory)."""
    return uses_rules(config, overrides) or any(u.vram_mib for u in config.units.values())


def plan_inputs(config: Config, overrides: Mapping[str, object]) -> PlanInputs:
    """[plan] defaults from the stack file, overridden by the command line's flags."""
    names = {f.name for f in fields(PlanInputs)}
    values: dict[str, Any] = {k: v for k, v in config.stack.plan.items() if k in names}  # types: the loader's
    values.update({k: v for k, v in overrides.items() if k in names and v is not None})
    return PlanInputs(**values)


def user_ip(stack: StackSpec, environ: Mapping[str, str], probs: Problems | None = None) -> str:
    """``${USER_IP}``: the environment's, else the stack's env file's, else ``localhost``.

    The env file is read here at every plan: one that is there but not a regular file of at most 1 MiB (a FIFO,
    a device, a directory) is a problem on ``stack.env_file`` (qasup also writes that file at ``up``); one that
    is missing or malformed is not (it is reported where a unit lists it in ``env_files``)."""
    existing: dict[str, str] = {}
    path = stack.path(stack.env_file)
    try:
        existing = dotenv.load(path)
    except FileRefused as e:
        if probs is not None:
            probs.add(stack.file or stack.root, "stack.env_file", f"the stack's env file {path} {e}: it must be "
                      f"a regular file of at most {MAX_FILE_BYTES >> 20} MiB (qasup reads it and writes the plan's "
                      "values to it)")
    except (OSError, ValueError):
        pass
    return environ.get("USER_IP") or existing.get("USER_IP") or "localhost"


def make_plan(config: Config, overrides: Mapping[str, object], gpus: Sequence[GpuInfo], probs: Problems,
              environ: Mapping[str, str] | None = None, check_paths: bool = True,
              notes: Sequence[str] = (), subset: Subset | None = None) -> Plan:
    """Build the plan. Configuration problems go to ``probs`` (exit 2); infeasibility is in the result (exit 1).
    ``notes`` are added to the plan's messages when QAnything's rules are used. ``subset``: the part of the stack
    this machine runs (``--only``/``--except``, :mod:`supervisor.plan.subset`); the GPU stages see only it.

    Raises :class:`supervisor.plan.qanything.PlanInputError` for invalid inputs (flags or [plan] values), and
    :class:`supervisor.plan.subset.SubsetError` for a bad subset.
    """
    subset = subset or Subset()
    environ = dict(os.environ) if environ is None else environ
    stack = config.stack
    inputs = plan_inputs(config, overrides)
    outcome = None
    if uses_rules(config, overrides):   # a stack without them never imports QAnything's rules
        from supervisor.plan.qanything import decide

        outcome = decide(inputs, gpus)
    errors: list[str] = []
    messages: list[str] = list(outcome.messages) if outcome else []
    if outcome is not None and not outcome.feasible and outcome.error:
        errors.append(outcome.error)
    facts: Mapping[str, object] = outcome.when_facts() if outcome else {}
    env_out = dict(outcome.env()) if outcome else {}
    # The values ${USER_IP} and friends expand from, beyond what is written to the env file.
    lookup_extra = {"USER_IP": user_ip(stack, environ, probs)}
    plan_env = {**lookup_extra, **env_out}

    config, dropin_uses = apply_conditionals(config, facts, probs)   # drop-ins whose own [when] matches
    services = stages.select_services(config, facts, stages.gpu_ids(outcome, inputs))
    for name, uses in dropin_uses.items():
        s, off = services[name], config.units[name].file_of("enabled")   # disabled by a conditional drop-in: say which
        why = next((f"enabled = false in {d.file.parent.name}/{d.file.name} ({d.reason})" for d in uses
                    if d.applied and d.file == off and not s.enabled), s.reason)
        services[name] = dataclasses.replace(s, dropins=uses, reason=why)
    wiring = stages.wire(config, services, probs)
    config, wiring, _ = subsets.apply(subset, config, services, wiring, probs, messages)
    loaders = stages.gpu_loaders(services)
    memory_errors, memory_messages = stages.check_free_memory(loaders, services, gpus)
    errors += memory_errors
    messages += memory_messages
    graph = wiring.graph
    gpu_edges: tuple[tuple[str, str], ...] = ()
    if not graph.cycles():
        graph, gpu_edges = stages.order_gpu_loaders(wiring, loaders, services)
        stages.with_waves(services, graph)
    resolved, missing = stages.resolve_enabled(config, services, plan_env, env_out, environ, probs,
                                               check_paths=check_paths)
    if missing:
        errors.append("missing paths: " + "; ".join(missing))
    banner = expand_banner(stack, plan_env, probs, environ)
    if outcome is not None:
        messages += notes
    return Plan(config=config, inputs=inputs, outcome=outcome, gpus=tuple(gpus), feasible=not errors,
                error="; ".join(errors) or None, messages=tuple(messages), env=MappingProxyType(env_out),
                facts=MappingProxyType(dict(facts)), services=MappingProxyType(services), graph=graph,
                gpu_edges=gpu_edges, resolved=MappingProxyType(resolved), banner=banner,
                lookup_extra=MappingProxyType(lookup_extra), subset=subset)
