"""``GET /metrics``: the stack in the Prometheus text exposition format (version 0.0.4).

A scrape is one status call (:meth:`Controller.status`) plus what :class:`Observed` reads (the plan's GPU facts,
the event count, the echo's drop counts) and three reads of the daemon's own ``/proc/self`` (memory, CPU time,
open descriptors): nothing is sampled between scrapes, so an idle daemon that nobody scrapes does no work.

Naming follows Prometheus's conventions and ``promtool check metrics``'s lints (checked by tests/test_metrics.py):
every name starts with ``qasup_`` and is snake_case, counters (and only counters) end in ``_total``, units are
base units named as suffixes (``_seconds``, ``_bytes``), every family has HELP and TYPE lines, label values are
escaped (backslash, double quote, newline) and no name uses a reserved suffix (``_count``, ``_sum``,
``_bucket``, ``_created``) or a colon.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any

from supervisor.protocol import ServiceState, StackState
from supervisor.records import dataclass

if TYPE_CHECKING:
    from supervisor.plan.result import Plan
    from supervisor.protocol import StatusPayload

__all__ = ["CONTENT_TYPE", "Observed", "plan_facts", "process_facts", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MIB = 1024 * 1024
_PLAN_KEYS = ("llm_api", "runtime_backend", "model_name", "model_size", "offcut_token", "tensor_parallel",
              "gpu_id1", "gpu_id2", "ocr_use_gpu")


def _nothing() -> dict[str, Any]:
    return {}


def _zero() -> int:
    return 0


@dataclass(frozen=True)
class Observed:
    """What ``/metrics`` and the status page read besides the controller's status, each read when asked:
    ``plan()`` the running plan's facts (:func:`plan_facts`), ``events_total()`` the events recorded since the
    daemon started, ``echo_dropped()`` the lines the stdout echo dropped, by service."""

    plan: Callable[[], Mapping[str, Any]] = field(default=_nothing)
    events_total: Callable[[], int] = field(default=_zero)
    echo_dropped: Callable[[], Mapping[str, int]] = field(default=_nothing)
    api_refused: Callable[[], Mapping[str, int]] = field(default=_nothing)


def plan_facts(plan: Plan) -> dict[str, Any]:
    """What the status page shows of the plan (``/v1/status?plan=1``) and ``/metrics`` of its GPUs: QAnything's
    decisions (backend, model, size, OFFCUT_TOKEN, GPU ids; None where the stack does not use its rules) and
    the GPUs as planned (NVML's or the declared inventory's facts at plan time)."""
    o = plan.outcome
    out: dict[str, Any] = {k: getattr(o, k, None) if o is not None else None for k in _PLAN_KEYS}
    out["uses_qanything_rules"] = o is not None
    out["feasible"] = plan.feasible
    out["gpus"] = [g.to_json() for g in plan.gpus]
    return out


def process_facts() -> dict[str, float]:
    """The daemon's own resident memory (bytes), CPU time (user + system, seconds) and open descriptors."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/statm", "rb") as f:
            out["rss"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    out["cpu"] = t.user + t.system
    try:
        out["fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------- the text format


def escape_label(value: object) -> str:
    """A label value as the text format writes it between double quotes."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


Labels = Sequence[tuple[str, object]]


class _Writer:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float | int | bool]]
               ) -> None:
        """One metric family: HELP, TYPE, then its samples (a family with no sample is left out)."""
        lines = [f"{name}{_labels(labels)} {_number(value)}\n" for labels, value in samples]
        if lines:
            self.parts.append(f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} {kind}\n")
            self.parts.extend(lines)

    def text(self) -> str:
        return "".join(self.parts)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"


def render_metrics(status: StatusPayload, observed: Observed, process: Mapping[str, float] | None = None) -> str:
    """The exposition of one status payload and what ``observed`` reads now."""
    stack = status["stack"]
    rows = status["services"]
    now = float(stack.get("time", 0.0))
    echo = observed.echo_dropped()
    w = _Writer()

    def per(key: Callable[[Mapping[str, Any]], Any]) -> list[tuple[Labels, Any]]:
        return [((("service", r["name"]),), v) for r in rows if (v := key(r)) is not None]

    w.family("qasup_service_up", "gauge", "1 when the service is ready, else 0.",
             per(lambda r: r["state"] == ServiceState.READY))
    w.family("qasup_service_external", "gauge",
             "1 when the service runs elsewhere and is only probed from here (external = true, or outside "
             "up --only), else 0.", per(lambda r: bool(r.get("external"))))
    w.family("qasup_service_state", "gauge", "The service's state: one series per state, 1 for the current one.",
             [((("service", r["name"]), ("state", s.value)), r["state"] == s) for r in rows for s in ServiceState])
    w.family("qasup_service_restarts_total", "counter", "Restarts by the restart policy since the daemon started.",
             per(lambda r: r["restarts"]))
    w.family("qasup_service_start_time_seconds", "gauge",
             "Unix time the current instance's process started (absent while none runs).",
             per(lambda r: None if r.get("uptime_s") is None else round(now - r["uptime_s"], 3)))
    w.family("qasup_service_ready_seconds", "gauge",
             "Seconds from the start of the current instance to ready (present while it is ready).",
             per(lambda r: r.get("ready_after_s") if r["state"] == ServiceState.READY else None))
    counters = {r["name"]: r.get("counters") or {} for r in rows}
    w.family("qasup_service_last_exit_code", "gauge",
             "Exit code of the service's last exit (128+N for a death by signal N; absent before any exit).",
             per(lambda r: _last_exit(r, counters[r["name"]])))
    w.family("qasup_service_log_bytes_total", "counter", "Bytes of the service's output written to its log files.",
             per(lambda r: counters[r["name"]].get("log_bytes", 0)))
    w.family("qasup_service_log_dropped_bytes_total", "counter",
             "Bytes of the service's output its log files could not take (a full disk, a failing write).",
             per(lambda r: counters[r["name"]].get("log_dropped_bytes", 0)))
    w.family("qasup_service_echo_dropped_lines_total", "counter",
             "Lines of the service's output left out of qasup's stdout echo (stdout too slow; the log has them).",
             per(lambda r: echo.get(r["name"], 0)))
    w.family("qasup_service_rule_matches_total", "counter",
             "Lines that matched an [[on_log]] error rule, by the rule's pattern.",
             [((("service", r["name"]), ("rule", pattern)), n) for r in rows
              for pattern, n in sorted((counters[r["name"]].get("rule_matches") or {}).items())])
    w.family("qasup_service_live_failures_total", "counter",
             "Times the service's [live] checks failed `failures` rounds in a row.",
             per(lambda r: counters[r["name"]].get("live_failures", 0)))
    _stack_families(w, stack, rows)
    _process_families(w, round(now - float(stack["uptime_s"]), 3), process_facts() if process is None else process,
                      observed.events_total())
    w.family("qasup_api_refused_total", "counter", "Connections and requests the control API turned away for want "
             "of room (503, or an idle connection closed), by reason.",
             [((("reason", reason),), n) for reason, n in observed.api_refused().items()])
    _gpu_families(w, observed.plan().get("gpus") or ())
    return w.text()


def _last_exit(row: Mapping[str, Any], counters: Mapping[str, Any]) -> int | None:
    """The last exit's code: the status's while the service is down, the counters' (kept) while it runs again."""
    code = row.get("exit_code")
    return counters.get("last_exit_code") if code is None else code


def _stack_families(w: _Writer, stack: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    w.family("qasup_stack_info", "gauge", "The stack's name (always 1).", [((("stack", stack["name"]),), 1)])
    w.family("qasup_stack_ready", "gauge", "1 when every enabled service is ready, else 0.",
             [((), stack["state"] == StackState.READY)])
    w.family("qasup_stack_state", "gauge", "The stack's state: one series per state, 1 for the current one.",
             [((("state", s.value),), stack["state"] == s) for s in StackState])
    by_state = {s.value: 0 for s in ServiceState}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    w.family("qasup_stack_services", "gauge", "Services of the stack in each state.",
             [((("state", s),), n) for s, n in by_state.items()])


def _process_families(w: _Writer, started: float, process: Mapping[str, float], events: int) -> None:
    w.family("qasup_process_start_time_seconds", "gauge", "Unix time the qasup daemon started.", [((), started)])
    if "rss" in process:
        w.family("qasup_process_resident_memory_bytes", "gauge", "Resident memory of the qasup daemon.",
                 [((), int(process["rss"]))])
    w.family("qasup_process_cpu_seconds_total", "counter", "CPU time (user and system) of the qasup daemon.",
             [((), round(process["cpu"], 3))])
    if "fds" in process:
        w.family("qasup_process_open_fds", "gauge", "File descriptors the qasup daemon has open.",
                 [((), int(process["fds"]))])
    w.family("qasup_events_total", "counter", "Events recorded (events.jsonl) since the daemon started.",
             [((), events)])


def _gpu_families(w: _Writer, gpus: Iterable[Mapping[str, Any]]) -> None:
    gpus = list(gpus)

    def labels(g: Mapping[str, Any]) -> Labels:
        return (("index", g["index"]), ("name", g["name"]))

    w.family("qasup_gpu_memory_total_bytes", "gauge", "A GPU of the plan: its memory (NVML or the declared "
             "inventory, at plan time).", [(labels(g), int(g["memory_total_mib"]) * _MIB) for g in gpus])
    w.family("qasup_gpu_memory_free_bytes", "gauge", "A GPU of the plan: its free memory at plan time.",
             [(labels(g), int(g["memory_free_mib"]) * _MIB) for g in gpus])
