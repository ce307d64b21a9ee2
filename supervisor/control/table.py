"""The status table as text: one header line for the stack, one aligned row per service, state colours,
durations, and text from services cleaned into one printable line.

Pure functions of a status payload (``GET /v1/status``'s JSON). The daemon draws the table with them when
``qasup status`` asks for ``format=table`` (so the client parses no JSON), and the CLI with them for
``status --watch`` and for a daemon that does not draw it. Standard library only.
"""

from __future__ import annotations

from supervisor.protocol import ServiceState, StackState

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are strings here anyway
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from supervisor.protocol import ServiceStatus, StatusPayload

__all__ = ["clean_text", "format_duration", "last_error", "not_ready", "paint", "render_status"]


def format_duration(seconds: float | None) -> str:
    """``450ms``, ``3.2s``, ``42s``, ``5m03s``, ``1h02m``, ``2d03h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 9.95:
        return f"{s:.1f}s"
    whole = int(s)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


_GREEN, _YELLOW, _BOLD_RED, _DIM = "32", "33", "1;31", "2"
_STATE_COLOURS: dict[str, str] = {
    ServiceState.READY: _GREEN,
    ServiceState.STARTING: _YELLOW,
    ServiceState.PREPARING: _YELLOW,
    ServiceState.WAITING: _YELLOW,
    ServiceState.BACKOFF: _YELLOW,
    ServiceState.STOPPING: _YELLOW,
    ServiceState.FAILED: _BOLD_RED,
    StackState.ABORTED: _BOLD_RED,
    StackState.DEGRADED: _BOLD_RED,
    ServiceState.STOPPED: _DIM,
    ServiceState.DISABLED: _DIM,
}
"""The colour of each service or stack state (an SGR code); states not named here are not painted."""


def paint(text: str, state: str, colour: bool) -> str:
    """``text`` in the colour of ``state`` when ``colour`` is on (and the state has one)."""
    code = _STATE_COLOURS.get(state)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def clean_text(text: object) -> str:
    """One printable line: control characters (escape sequences from logs) become '?', newlines ' | '."""
    value = str(text).strip()
    if value.isprintable():   # the common case, checked in C: nothing to replace (1000 rows: ~10 ms less)
        return value
    value = value.replace("\r\n", "\n").replace("\n", " | ")
    return "".join(ch if ch.isprintable() else "?" for ch in value)


def last_error(service: ServiceStatus) -> str:
    """What the LAST ERROR column shows: the service's last error and, while it starts, what it waits on; else
    what it said by sd_notify (STATUS=); else a failed service's exit code; else -."""
    waiting = service.get("waiting_on") if service.get("state") in (
        ServiceState.WAITING, ServiceState.PREPARING, ServiceState.STARTING) else None
    if service.get("last_error"):
        error = clean_text(service["last_error"])
        return f"{error}; now {clean_text(waiting)}" if waiting else error
    if waiting:
        return clean_text(waiting)
    if service.get("notify"):
        return clean_text(service["notify"])
    if service.get("state") == ServiceState.FAILED and service.get("exit_code") is not None:
        return f"exited with code {service['exit_code']}"
    return "-"


def render_status(payload: StatusPayload, *, colour: bool = False, width: int | None = None,
                  show_disabled: bool = True) -> str:
    """The status table: a stack header line, then one aligned row per service.

    ``width`` (the terminal's) truncates the LAST ERROR column so rows do not wrap. Keys missing from the
    payload (a daemon of another version) show as ``?`` or ``-``; the table is drawn all the same.
    ``show_disabled=False`` leaves out the services the plan disabled, and says under the table how many.
    """
    stack = payload.get("stack") or {}
    services: list[ServiceStatus] = [s for s in payload.get("services") or [] if isinstance(s, dict)]
    enabled = [s for s in services if s.get("state") != ServiceState.DISABLED]
    hidden = 0 if show_disabled else len(services) - len(enabled)
    if hidden:
        services = enabled
    ready = sum(1 for s in enabled if s.get("state") == ServiceState.READY)
    stack_state = str(stack.get("state", "?"))
    header = [f"stack {paint(stack_state, stack_state, colour)}"]
    if stack.get("pid") is not None:
        header.append(f"pid {stack['pid']}")
    if stack.get("uptime_s") is not None:
        header.append(f"up {format_duration(stack['uptime_s'])}")
    header.append(f"{ready}/{len(enabled)} services ready")
    lines = ["  ".join(header)]

    titles = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "READY", "LAST ERROR")
    rows = [
        (
            clean_text(s.get("name", "?")),
            clean_text(s.get("state", "?")),
            "external" if s.get("external") else "-" if s.get("pid") is None else str(s["pid"]),
            format_duration(s.get("uptime_s")),
            str(s.get("restarts", 0) or 0),
            format_duration(s.get("ready_after_s")),
            last_error(s),
        )
        for s in services
    ]
    # every column but the last (LAST ERROR) is padded to its widest cell
    widths = [max([len(t)] + [len(r[i]) for r in rows]) for i, t in enumerate(titles[:-1])]
    prefix_width = sum(widths) + 2 * len(widths)
    lines.append("  ".join(t.ljust(w) for t, w in zip(titles, widths, strict=False)) + "  " + titles[-1])
    for row in rows:
        cells = []
        for i, (cell, w) in enumerate(zip(row, widths, strict=False)):
            padded = cell.rjust(w) if i in (2, 4) else cell.ljust(w)
            cells.append(paint(padded, row[1], colour) if i == 1 else padded)
        error = row[-1]
        if width and prefix_width + len(error) > width:
            error = error[: max(10, width - prefix_width - 1)] + "~"
        lines.append("  ".join(cells) + "  " + error)
    if hidden:
        # a unit outside `up --only`/`--except` is disabled here with the reason "not run here: ..." (plan/subset.py)
        elsewhere = sum(1 for s in payload.get("services") or [] if isinstance(s, dict)
                        and s.get("state") == ServiceState.DISABLED and "not run here" in str(s.get("last_error")))
        parts = []
        if hidden - elsewhere:
            parts.append(f"{hidden - elsewhere} service{'s' if hidden - elsewhere != 1 else ''} disabled by the plan")
        if elsewhere:
            parts.append(f"{elsewhere} run{'s' if elsewhere == 1 else ''} on other machines")
        lines.append(f"({' and '.join(parts)} not shown: qasup status --all)")
    return "\n".join(lines)


def not_ready(payload: StatusPayload | Mapping[str, Any]) -> int:
    """How many enabled services of the payload are not ready (``qasup status`` exits 3 unless none)."""
    return sum(1 for s in payload.get("services") or [] if isinstance(s, dict)
               and s.get("state") not in (ServiceState.READY, ServiceState.DISABLED))
