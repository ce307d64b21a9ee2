"""Reload: build a new plan from the files and compare it with the running services: which to add, which to
restart (their resolved unit or plan changed), which to remove. The engine applies the change."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field
from typing import TYPE_CHECKING

from supervisor.engine import messages as m
from supervisor.engine.errors import Rejected, ReloadRejected
from supervisor.errors import Problems
from supervisor.plan.resolve import ReadyChecks, ResolvedUnit, resolve_unit
from supervisor.plan.result import Plan, ServicePlan
from supervisor.records import dataclass

if TYPE_CHECKING:
    from supervisor.engine.service import Service


def plan_again(planner: Callable[[], Plan]) -> Plan:
    """The new plan, or :class:`Rejected` (invalid configuration, or infeasible): the running one stays."""
    try:
        new = planner()
    except ReloadRejected as e:
        raise Rejected(f"new configuration rejected, the running one stays: {e}") from None
    if not new.feasible:
        raise Rejected(f"new plan is infeasible, the running one stays: {new.error}")
    return new


@dataclass
class Change:
    """What a new plan changes: units to add, messages for the services that stay, and the names for the
    answer (``changed``: their unit or plan differs and they restart)."""

    added: list[tuple[ResolvedUnit, ServicePlan]] = field(default_factory=list)
    messages: list[tuple[str, m.Message]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def added_names(self) -> list[str]:
        return [unit.name for unit, _ in self.added]

    def summary(self) -> str:
        """``changed A, B; added none; removed C`` (qasup's reload line and event)."""
        return "; ".join(f"{what} {', '.join(names) or 'none'}" for what, names in (
            ("changed", self.changed), ("added", self.added_names), ("removed", self.removed)))


def compare(services: Mapping[str, Service], new: Plan) -> Change:
    """How ``new`` differs from the running services."""
    change = Change()
    for name, splan in new.services.items():
        unit = new.resolved.get(name) or lenient_resolve(new, name)
        svc = services.get(name)
        if svc is None or svc.removed:
            change.added.append((unit, splan))
            continue
        differs = fingerprint(svc.unit, svc.splan) != fingerprint(unit, splan)
        if differs:
            change.changed.append(name)
        change.messages.append((name, m.Replace(unit, splan, differs)))
    for name, svc in services.items():
        if name not in new.services and not svc.removed:
            change.removed.append(name)
            change.messages.append((name, m.Remove()))
    return change


def fingerprint(unit: ResolvedUnit, splan: ServicePlan) -> tuple[object, ...]:
    """What makes a running service out of date: its resolved command, environment, files, checks (``[ready]``
    and ``[live]``), how it runs (type, pid file, user and groups), what it restarts with, and its plan."""
    s = unit.spec
    return (unit.argv, str(unit.cwd), tuple(sorted(unit.env.items())), str(unit.log_file), unit.tail,
            unit.prepare_argv, unit.ready, unit.live, unit.rules, s.stop, s.restart, s.log, s.type, unit.pid_file,
            s.user, s.group, s.groups, s.restart_with, splan.enabled, tuple(sorted(splan.env.items())))


def lenient_resolve(plan: Plan, name: str) -> ResolvedUnit:
    """A disabled unit still shows in status and has a log path; unknown variables are left as written."""
    unit = plan.config.units[name]
    probs = Problems()
    r = resolve_unit(plan.config.stack, unit, {**plan.lookup_extra, **plan.env}, {}, probs,
                     pending_env_file=plan.env)
    if r is not None:
        return r
    stack = plan.config.stack
    return ResolvedUnit(spec=unit, argv=unit.command, cwd=stack.root, env={}, log_file=stack.path(
        stack.log_dir) / f"{name}.log", tail=(), requires_paths=(), prepare_argv=None, prepare_paths=(),
        ready=ReadyChecks(None, None, None, None, "all", unit.ready.timeout, unit.ready.interval), rules=())
