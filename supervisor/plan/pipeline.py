"""The one way to a plan: ``load_plan(PlanRequest) -> Plan``, used by ``check``, ``plan``, ``up`` and reload.

Three named stages, each of which can stop the run:

1. :func:`load_stage`: the stack and its units (:mod:`supervisor.config.loader`); problems are collected;
2. :func:`inventory_stage`: the GPU inventory: ``--gpus``, else ``QASUP_GPUS``, else the stack's
   ``[plan] gpus``, else NVML (only when the stack can use GPU facts); a bad declared inventory is a
   :class:`UsageError`;
3. :func:`plan_stage`: the plan (:func:`supervisor.plan.build.make_plan`); bad run.sh inputs are a
   :class:`UsageError`; then every problem collected so far is raised at once as a
   :class:`~supervisor.errors.ConfigError`. The default control socket's length is checked here too: it
   is a configuration value only when neither ``--socket`` (``PlanRequest.socket``) nor ``$QASUP_SOCKET`` is set.

Both errors mean exit 2. An infeasible plan is not an error: it is a plan with ``feasible`` False (exit 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from types import MappingProxyType

from supervisor.config.loader import collect_config
from supervisor.config.spec import Config, StackSpec
from supervisor.config.stack import check_socket_path
from supervisor.errors import ConfigError, Problems
from supervisor.plan import gpu
from supervisor.plan.build import make_plan, needs_gpu_inventory
from supervisor.plan.qanything_inputs import PlanInputError
from supervisor.plan.result import Plan
from supervisor.plan.subset import SubsetError, subset_from
from supervisor.protocol import SOCKET_ENV
from supervisor.records import dataclass

__all__ = ["PlanRequest", "UsageError", "inventory_stage", "load_plan", "load_stage", "plan_stage"]


class UsageError(Exception):
    """Bad flags or inventory: exit 2 with this message."""


def _no_overrides() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True)
class PlanRequest:
    """What a plan is asked for; the same request planned again (a reload) sees the files as they are then."""

    config: Path | None = None      # --config FILE or folder; None: ./qasup.toml, else ./services.d
    overrides: Mapping[str, object] = field(default_factory=_no_overrides)   # the run.sh flags given
    gpus: str | None = None         # --gpus SPEC
    check_paths: bool = True        # False (check): requires_paths are not looked for
    environ: Mapping[str, str] | None = None   # QASUP_GPUS and ${NAME}; None: os.environ when planned
    cwd: Path | None = None         # where the stack is looked for; None: the current folder when planned
    socket: Path | None = None      # --socket; None: $QASUP_SOCKET, else <state_dir>/qasup.sock (length checked)
    only: tuple[str, ...] = ()      # --only: the units this machine runs (both empty: $QASUP_ONLY/$QASUP_EXCEPT)
    exclude: tuple[str, ...] = ()   # --except: the units it does not run


def load_plan(request: PlanRequest) -> Plan:
    """Config -> inventory -> plan. Raises :class:`~supervisor.errors.ConfigError` (every problem) or
    :class:`UsageError`."""
    environ = dict(os.environ) if request.environ is None else request.environ
    probs = Problems()
    config = load_stage(request, probs)
    inventory = inventory_stage(request, config, environ)
    return plan_stage(request, config, inventory, probs, environ)


def load_stage(request: PlanRequest, probs: Problems) -> Config:
    """The config, its problems added to ``probs``; a ConfigError when not even the stack could be read."""
    config = collect_config(request.config, request.cwd, probs)
    if config is None:
        raise ConfigError(probs.items)
    return config


def inventory_stage(request: PlanRequest, config: Config, environ: Mapping[str, str]) -> gpu.Inventory:
    """The GPU inventory the plan uses. Raises UsageError for a declared inventory that cannot be used."""
    spec = request.gpus
    if spec is None and not environ.get("QASUP_GPUS", "").strip():
        spec = _declared_inventory(config.stack)
    try:
        return gpu.load_inventory(spec, environ, nvml=needs_gpu_inventory(config, request.overrides))
    except gpu.GpuSpecError as e:
        raise UsageError(str(e)) from None


def _declared_inventory(stack: StackSpec) -> str | None:
    """The stack's ``[plan] gpus`` as a ``--gpus`` spec: an array as JSON, a file's path from the stack folder."""
    declared = stack.plan.get("gpus")
    if isinstance(declared, list):
        return json.dumps(declared)
    if isinstance(declared, str):
        if declared.strip() not in ("none", "") and not declared.lstrip().startswith("["):
            return str(stack.path(declared))
        return declared
    return None


def plan_stage(request: PlanRequest, config: Config, inventory: gpu.Inventory, probs: Problems,
               environ: Mapping[str, str]) -> Plan:
    """The plan; raises UsageError for bad inputs, then ConfigError if any problem was found on the way."""
    notes = (f"GPU inventory: {inventory.reason}",) if inventory.reason else ()
    if request.socket is None and not environ.get(SOCKET_ENV):
        check_socket_path(config.stack, probs)
    try:
        subset = subset_from(request.only, request.exclude, environ)
        plan = make_plan(config, request.overrides, inventory.gpus, probs, environ=environ,
                         check_paths=request.check_paths, notes=notes, subset=subset)
    except (PlanInputError, SubsetError) as e:
        raise UsageError(str(e)) from None
    probs.raise_if_any()
    return plan
