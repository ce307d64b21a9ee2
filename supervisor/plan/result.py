"""What a plan is: :class:`Plan` (the whole stack's) and :class:`ServicePlan` (one service's), both frozen,
and the plan's ``plan --json`` form. Built by :func:`supervisor.plan.build.make_plan`; the engine runs one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor.config.spec import Config
from supervisor.plan.dropins import DropinUse
from supervisor.plan.gpu import GpuInfo
from supervisor.plan.graph import Graph
from supervisor.plan.qanything import PlanInputs, PlanOutcome
from supervisor.plan.resolve import ResolvedUnit
from supervisor.protocol import mask_env

__all__ = ["Plan", "ServicePlan"]

_OUTCOME_KEYS = ("llm_api", "requested_backend", "runtime_backend", "model_name", "model_size", "gpu_id1",
                 "gpu_id2", "tensor_parallel", "offcut_token", "ocr_use_gpu")


@dataclass(frozen=True)
class ServicePlan:
    """One service in the plan: enabled or not and why, its wave in the start order, its edges, its GPUs."""

    name: str
    enabled: bool
    reason: str
    wave: int | None = None
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    gpu_ids: tuple[int, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    vram_mib: int | None = None
    dropins: tuple[DropinUse, ...] = ()     # its conditional drop-ins: applied in this plan or not, and why


@dataclass(frozen=True)
class Plan:
    """What will run: built whole (messages included) and never changed afterwards."""

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
        """``plan --json``: secrets in the environments shown as ``***``."""
        o = self.outcome
        out: dict[str, Any] = {"feasible": self.feasible, "error": self.error, "messages": list(self.messages)}
        for k in _OUTCOME_KEYS:
            out[k] = getattr(o, k) if o is not None else None
        out["uses_qanything_rules"] = o is not None
        out["gpus"] = [g.to_json() for g in self.gpus]
        out["env"] = mask_env(self.env)
        waves = self.graph.waves() if not self.graph.cycles() else []
        out["waves"] = waves
        out["gpu_order"] = [list(e) for e in self.gpu_edges]
        out["services"] = [
            {"name": s.name, "enabled": s.enabled, "reason": s.reason, "wave": s.wave,
             "requires": list(s.requires), "after": list(s.after), "gpu_ids": list(s.gpu_ids),
             "vram_mib": s.vram_mib, "env": mask_env(s.env),
             "dropins": [{"file": str(d.file), "applied": d.applied, "reason": d.reason} for d in s.dropins]}
            for s in self.services.values()]
        return out
