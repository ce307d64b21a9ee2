"""The verbs that work on configuration: ``check``, ``plan`` and ``up`` (which hands over to the daemon)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from supervisor.cli.flags import RUNSH_FLAGS
from supervisor.errors import ConfigError
from supervisor.plan.pipeline import PlanRequest, UsageError, load_plan
from supervisor.plan.resolve import describe_checks
from supervisor.plan.result import Plan
from supervisor.plan.subset import split_names
from supervisor.protocol import Exit, mask_env

if TYPE_CHECKING:
    from collections.abc import Callable

    from supervisor.plan.dropins import DropinUse

__all__ = ["cmd_check", "cmd_plan", "cmd_up", "overrides", "plan_request"]


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The run.sh flags given on the command line, by ``[plan]`` key."""
    return {dest: getattr(args, dest) for _, _, dest, _, _ in RUNSH_FLAGS if getattr(args, dest, None) is not None}


def plan_request(args: argparse.Namespace, *, check_paths: bool = True) -> PlanRequest:
    """What the command line asks to plan: ``--config``, the run.sh flags, ``--gpus``, ``--socket``, ``--only``
    and ``--except`` (a reload plans the same request: the same subset)."""
    return PlanRequest(config=Path(args.config) if getattr(args, "config", None) else None,
                       overrides=MappingProxyType(overrides(args)), gpus=getattr(args, "gpus", None),
                       check_paths=check_paths,
                       socket=Path(args.socket) if getattr(args, "socket", None) else None,
                       only=split_names(getattr(args, "only", None) or ()),
                       exclude=split_names(getattr(args, "exclude", None) or ()))


def _report_problems(e: ConfigError) -> int:
    for p in e.problems:
        print(p, file=sys.stderr)
    n = len(e.problems)
    print(f"qasup: {n} problem{'s' if n != 1 else ''} found", file=sys.stderr)
    return Exit.CONFIG


def _plan_or_exit_code(request: PlanRequest) -> Plan | int:
    """The plan, or the exit code after reporting why there is none (problems or bad usage: 2)."""
    try:
        return load_plan(request)
    except ConfigError as e:
        return _report_problems(e)
    except UsageError as e:
        print(f"qasup: {e}", file=sys.stderr)
        return Exit.CONFIG


def cmd_check(args: argparse.Namespace) -> int:
    plan = _plan_or_exit_code(plan_request(args, check_paths=False))
    if isinstance(plan, int):
        return plan
    units = len(plan.config.units)
    warn = _stop_budget_warnings(plan)
    for w in warn:
        print(f"warning: {w}", file=sys.stderr)
    print(f"ok: {units} unit{'s' if units != 1 else ''} valid, {len(plan.enabled) + len(plan.not_run_here)} "
          f"enabled in this plan{_placement_summary(plan)}")
    if not plan.feasible:
        print(f"note: the plan is infeasible on this inventory: {plan.error}", file=sys.stderr)
    return Exit.OK


def _placement_summary(plan: Plan) -> str:
    """``; --only: 2 run here, 1 waited on elsewhere (x), 6 not run here`` (empty for a whole stack run here
    with no external unit)."""
    if not plan.subset and not plan.waited_on:
        return ""
    parts = [f"{len(plan.runs_here)} run here"]
    if plan.waited_on:
        parts.append(f"{len(plan.waited_on)} waited on elsewhere ({', '.join(plan.waited_on)})")
    if plan.subset:
        parts.append(f"{len(plan.not_run_here)} not run here")
    return "; " + (f"{plan.subset.source}: " if plan.subset else "") + ", ".join(parts)


def _stop_budget_warnings(plan: Plan) -> list[str]:
    """Stop timeouts along a dependency chain (stopped one after another) that exceed the stop budget."""
    units = plan.config.units
    budget = plan.config.stack.stop_budget
    try:   # an external unit has nothing to stop
        total, path = plan.graph.critical_path({n: 0.0 if units[n].external else units[n].stop.timeout
                                                for n in plan.enabled})
    except ValueError:
        return []
    if total > budget:
        return [f"stop timeouts along {' -> '.join(reversed(path))} add up to {total:g}s, more than "
                f"stop_budget ({budget:g}s): raise stack.stop_budget or lower [stop] timeout"]
    return []


def cmd_plan(args: argparse.Namespace) -> int:
    plan = _plan_or_exit_code(plan_request(args))
    if isinstance(plan, int):
        return plan
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_plan(plan)
    return Exit.OK if plan.feasible else Exit.FAILED


def _print_plan(plan: Plan) -> None:
    out = sys.stdout.write
    o = plan.outcome
    out(f"plan: {'feasible' if plan.feasible else 'INFEASIBLE'}\n")
    if plan.error:
        out(f"  why: {plan.error}\n")
    for m in plan.messages:
        out(f"  - {m}\n")
    if plan.gpus:
        out("gpus:\n")
        for g in plan.gpus:
            out(f"  {g.index}: {g.name}, {g.memory_free_mib}/{g.memory_total_mib} MiB free, "
                f"compute {g.compute_capability}\n")
    else:
        out("gpus: none\n")
    if o is not None:
        out(f"backend: {o.runtime_backend} (asked: {o.requested_backend}), llm_api {o.llm_api}, model "
            f"{o.model_name or '-'} {o.model_size}, tensor parallel {o.tensor_parallel}, gpu_id1 {o.gpu_id1}, "
            f"gpu_id2 {o.gpu_id2}, OFFCUT_TOKEN {o.offcut_token}\n")
        env = mask_env(plan.env)
        out(f"env file {plan.config.stack.env_file}: " + " ".join(f"{k}={v}" for k, v in env.items()) + "\n")
    out("start order:\n")
    if not plan.graph.cycles():
        for k, wave in enumerate(plan.graph.waves()):
            for n in wave:
                s = plan.services[n]
                if n in plan.resolved and plan.resolved[n].external:
                    out(f"  wave {k}: {n:<24} waited on elsewhere: {describe_checks(plan.resolved[n].ready)}\n")
                    continue
                deps = ", ".join(list(s.requires) + [f"after {a}" for a in s.after]) or "-"
                gpu = f" gpu {','.join(map(str, s.gpu_ids))}" if s.gpu_ids else ""
                vram = f" {s.vram_mib} MiB" if s.vram_mib else ""
                out(f"  wave {k}: {n:<24} needs: {deps}{gpu}{vram}  ({s.reason})\n")
                _print_dropins(plan, s.dropins, out)
    for a, b in plan.gpu_edges:
        out(f"  gpu order: {b} starts after {a} is ready (they share a GPU; largest first)\n")
    _print_placement(plan, out)
    disabled = [s for s in plan.services.values() if not s.enabled and s.placement is None]
    if disabled:
        out("disabled:\n")
        for s in disabled:
            out(f"  {s.name:<24} {s.reason}\n")


def _print_placement(plan: Plan, out: Callable[[str], object]) -> None:
    """With a subset or external units: what runs here, what is waited on elsewhere (by which probe, for whom),
    and what is not run here."""
    if not plan.subset and not plan.waited_on:
        return
    sub = plan.subset
    asked = f" ({sub.source} {','.join(sub.only or sub.exclude)})" if sub else ""
    out(f"runs here{asked}: {', '.join(plan.runs_here) or '-'}\n")
    if plan.waited_on:
        out("waited on elsewhere (probed from here):\n")
        for n in plan.waited_on:
            probe = describe_checks(plan.resolved[n].ready) if n in plan.resolved else "(not resolved)"
            by = plan.services[n].needed_by
            out(f"  {n}: {probe}" + (f"  (needed by {', '.join(by)})" if by else "  (external = true)") + "\n")
    if sub:
        out(f"not run here: {', '.join(plan.not_run_here) or '-'}\n")


def _print_dropins(plan: Plan, dropins: tuple[DropinUse, ...], out: Callable[[str], object]) -> None:
    """A service's conditional drop-ins under its line: which applied in this plan and why."""
    root = plan.config.stack.root
    for d in dropins:
        try:
            shown = d.file.relative_to(root)
        except ValueError:
            shown = d.file
        mark = "+ applied" if d.applied else "- skipped"
        out(f"           {mark} {shown} ({d.reason})\n")


def cmd_up(args: argparse.Namespace) -> int:
    from supervisor import lazyssl

    lazyssl.install()   # before anyio is imported: OpenSSL is loaded only if TLS is ever used
    request = plan_request(args)
    plan = _plan_or_exit_code(request)
    if isinstance(plan, int):
        return plan
    for m in plan.messages:
        print(f"[qasup] plan: {m}", flush=True)
    if plan.subset or plan.waited_on:
        waits = ", ".join(f"{n} ({describe_checks(plan.resolved[n].ready)})" for n in plan.waited_on
                          if n in plan.resolved)
        print(f"[qasup] runs here: {', '.join(plan.runs_here) or '-'}; waits on elsewhere: {waits or '-'}"
              + (f"; not run here: {', '.join(plan.not_run_here) or '-'}" if plan.subset else ""), flush=True)
    if not plan.feasible:
        print(f"[qasup] the plan is infeasible: {plan.error}", file=sys.stderr, flush=True)
        return Exit.FAILED
    from supervisor.daemon import DaemonOptions, OptionsError, run_daemon
    from supervisor.engine.errors import ReloadRejected

    def planner() -> Plan:
        """The reload's plan: the same request, planned again."""
        try:
            return load_plan(request)
        except ConfigError as e:
            raise ReloadRejected("\n".join(str(p) for p in e.problems)) from None
        except UsageError as e:
            raise ReloadRejected(str(e)) from None

    try:
        options = DaemonOptions.from_values(socket=getattr(args, "socket", None), listen=getattr(args, "listen", None),
                                            no_echo=getattr(args, "no_echo", False), planner=planner,
                                            http=getattr(args, "http", None))
    except OptionsError as e:
        print(f"qasup: {e}", file=sys.stderr)
        return Exit.CONFIG
    return run_daemon(plan, options)
