"""What a plan is: :class:`Plan` (the whole stack's) and :class:`ServicePlan` (one service's), both frozen,
and the plan's ``plan --json`` form. Built by :func:`supervisor.plan.build.make_plan`; the engine runs one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any

from supervisor.config.spec import Config
from supervisor.plan.dropins import DropinUse
from supervisor.plan.gpu import GpuInfo
from supervisor.plan.graph import Graph
from supervisor.plan.qanything_inputs import PlanInputs
from supervisor.plan.resolve import ResolvedUnit, describe_checks
from supervisor.protocol import mask_env
from supervisor.records import dataclass

if TYPE_CHECKING:
    from supervisor.plan.qanything import PlanOutcome

__all__ = ["ELSEWHERE", "EXTERNAL", "HERE", "Plan", "ServicePlan", "Subset"]

HERE = "here"            # started and supervised by this qasup
EXTERNAL = "external"    # runs elsewhere; waited on here through its [ready] (and [live]) probes
ELSEWHERE = "elsewhere"  # enabled in the stack's plan, run by another machine, not waited on here

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
    placement: str | None = HERE            # HERE, EXTERNAL or ELSEWHERE; None: disabled in this plan
    needed_by: tuple[str, ...] = ()         # an EXTERNAL unit outside --only/--except: the units here that need it


@dataclass(frozen=True)
class Subset:
    """The part of the stack this machine runs (``up|check|plan --only`` / ``--except``): unit names as given
    (provided names allowed); ``source`` is where they came from (``--only``, ``QASUP_EXCEPT``, ...)."""

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    source: str = ""

    def __bool__(self) -> bool:
        return bool(self.only or self.exclude)

    @property
    def flag(self) -> str:
        """How messages name the subset: ``--only`` or ``--except``."""
        return "--only" if self.only else "--except"


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
    subset: Subset = field(default_factory=Subset)   # --only / --except (empty: the whole stack runs here)

    @property
    def enabled(self) -> list[str]:
        """The units this qasup has in its graph: those it runs (HERE) and those it waits on (EXTERNAL)."""
        return [n for n, s in self.services.items() if s.enabled]

    def placed(self, placement: str) -> list[str]:
        """The plan's units with ``placement`` (HERE, EXTERNAL or ELSEWHERE), in the config's order."""
        return [n for n, s in self.services.items() if s.placement == placement]

    @property
    def runs_here(self) -> list[str]:
        return self.placed(HERE)

    @property
    def waited_on(self) -> list[str]:
        """External units: explicit ones (``external = true``) and those outside the subset that a unit here needs."""
        return self.placed(EXTERNAL)

    @property
    def not_run_here(self) -> list[str]:
        """Enabled in the stack's plan, outside the subset and needed by nothing here: another machine's part."""
        return self.placed(ELSEWHERE)

    @property
    def run_elsewhere(self) -> int:
        """How many of the plan's services run on other machines (waited on or not): "N services run elsewhere"."""
        return len(self.waited_on) + len(self.not_run_here)

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
             "dropins": [{"file": str(d.file), "applied": d.applied, "reason": d.reason} for d in s.dropins],
             "placement": s.placement, "external": s.placement == EXTERNAL}
            for s in self.services.values()]
        out["subset"] = self.subset_json()
        return out

    def subset_json(self) -> dict[str, Any]:
        """What runs here, what is waited on elsewhere (with its probe) and what is not run here."""
        sub = self.subset
        return {"only": list(sub.only) or None, "except": list(sub.exclude) or None, "source": sub.source or None,
                "runs_here": self.runs_here,
                "waited_on": [{"name": n, "probe": describe_checks(self.resolved[n].ready) if n in self.resolved
                               else None, "needed_by": list(self.services[n].needed_by)} for n in self.waited_on],
                "not_run_here": self.not_run_here, "run_elsewhere": self.run_elsewhere}
