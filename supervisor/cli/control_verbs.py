"""The control verbs of the qasup CLI: status, start, stop, restart, logs, wait-ready, events, reload, shutdown.

They talk to a running ``qasup up`` through its control socket (``supervisor.control.client``).  Only the
standard library is imported, and little of it, so that ``qasup status`` starts fast.

Exit codes (interface.md):

=============  ==================================================================================
status         0 every enabled service (of those named) is ready; 3 some are not; 1 unknown
               service; 4 no daemon answering
start/stop/    0 done; 1 failed (or unknown service); 4 no daemon
restart
logs           0; 1 unknown service; 4 no daemon
wait-ready     0 ready; 1 timed out, failed, or no daemon by the deadline (1, not 4, so that it
               works as a Docker HEALTHCHECK, where only 0 and 1 are meaningful)
events         0 when the daemon ends the stream; 4 no daemon
reload         0 reloaded; 2 new configuration invalid (the old one stays); 1 other failure; 4
shutdown       0 shutdown begun (with --wait: daemon gone); 1 --wait timed out; 4 no daemon
=============  ==================================================================================
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are strings here anyway
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence

from supervisor.control import client

__all__ = [
    "VERBS",
    "format_duration",
    "mask_secrets",
    "parse_timeout",
    "register",
    "render_status",
    "run",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_CONFIG = 2
EXIT_NOT_READY = 3
EXIT_NO_DAEMON = 4
EXIT_INTERRUPTED = 130

_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
MASK = "***"


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` where every mapping entry whose key contains KEY, TOKEN, SECRET or
    PASSWORD (in any case) shows ``***`` instead of its value; recurses into dicts and lists.

    ``None`` stays ``None`` (an unset secret is not a secret).
    """
    if isinstance(value, dict):
        return {
            k: (MASK if v is not None and _is_secret_key(k) else mask_secrets(v)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [mask_secrets(v) for v in value]
    return value


def _is_secret_key(key: object) -> bool:
    upper = str(key).upper()
    return any(word in upper for word in _SECRET_WORDS)


# --------------------------------------------------------------------------- formatting


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


def parse_timeout(text: str) -> float:
    """``"60s"``, ``"500ms"``, ``"5m"``, ``"1h"``, ``"1m30s"`` or a bare number of seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    rest = text.strip()
    try:
        value = float(rest)
    except ValueError:
        pass
    else:
        if value < 0 or value != value:
            raise argparse.ArgumentTypeError(f"{text!r}: a timeout cannot be negative")
        return value
    total, matched = 0.0, False
    while rest:
        i = 0
        while i < len(rest) and (rest[i].isdigit() or rest[i] == "."):
            i += 1
        j = i
        while j < len(rest) and rest[j].isalpha():
            j += 1
        number, unit = rest[:i], rest[i:j]
        if not number or unit not in units:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 60s, 500ms, 5m or 1h")
        try:
            total += float(number) * units[unit]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 60s, 500ms, 5m or 1h") from None
        matched = True
        rest = rest[j:]
    if not matched:
        raise argparse.ArgumentTypeError("empty timeout")
    return total


_STATE_COLOURS = {
    "ready": "32",  # green
    "starting": "33",
    "preparing": "33",
    "waiting": "33",
    "backoff": "33",
    "stopping": "33",
    "failed": "1;31",  # bold red
    "aborted": "1;31",
    "degraded": "1;31",
    "stopped": "2",  # dim
    "disabled": "2",
}


def _use_colour(stream: Any) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _paint(text: str, state: str, colour: bool) -> str:
    code = _STATE_COLOURS.get(state)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def _clean(text: Any) -> str:
    """One printable line: control characters (escape sequences from logs) become '?', newlines ' | '."""
    value = str(text).strip().replace("\r\n", "\n").replace("\n", " | ")
    return "".join(ch if ch.isprintable() else "?" for ch in value)


def _last_error(service: dict) -> str:
    if service.get("last_error"):
        return _clean(service["last_error"])
    if service.get("state") == "failed" and service.get("exit_code") is not None:
        return f"exited with code {service['exit_code']}"
    return "-"


def render_status(payload: dict, *, colour: bool = False, width: int | None = None) -> str:
    """The status table: a stack header line, then one aligned row per service.

    ``width`` (the terminal's) truncates the LAST ERROR column so rows do not wrap.
    """
    stack = payload.get("stack") or {}
    services = [s for s in payload.get("services") or [] if isinstance(s, dict)]
    enabled = [s for s in services if s.get("state") != "disabled"]
    ready = sum(1 for s in enabled if s.get("state") == "ready")
    stack_state = str(stack.get("state", "?"))
    header = [f"stack {_paint(stack_state, stack_state, colour)}"]
    if stack.get("pid") is not None:
        header.append(f"pid {stack['pid']}")
    if stack.get("uptime_s") is not None:
        header.append(f"up {format_duration(stack['uptime_s'])}")
    header.append(f"{ready}/{len(enabled)} services ready")
    lines = ["  ".join(header)]

    titles = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "READY", "LAST ERROR")
    rows = []
    for s in services:
        rows.append(
            (
                _clean(s.get("name", "?")),
                _clean(s.get("state", "?")),
                "-" if s.get("pid") is None else str(s["pid"]),
                format_duration(s.get("uptime_s")),
                str(s.get("restarts", 0) or 0),
                format_duration(s.get("ready_after_s")),
                _last_error(s),
            )
        )
    widths = [max([len(t)] + [len(r[i]) for r in rows]) for i, t in enumerate(titles[:-1])]
    prefix_width = sum(widths) + 2 * len(widths)
    lines.append("  ".join(t.ljust(w) for t, w in zip(titles, widths)) + "  " + titles[-1])
    for row in rows:
        cells = []
        for i, (cell, w) in enumerate(zip(row, widths)):
            padded = cell.rjust(w) if i in (2, 4) else cell.ljust(w)
            cells.append(_paint(padded, row[1], colour) if i == 1 else padded)
        error = row[-1]
        if width and prefix_width + len(error) > width:
            error = error[: max(10, width - prefix_width - 1)] + "~"
        lines.append("  ".join(cells) + "  " + error)
    return "\n".join(lines)


# --------------------------------------------------------------------------- argparse


_EXAMPLES = {
    "status": """examples:
  qasup status                 table of every service; exit 0 only when all enabled ones are ready
  qasup status sanic llm       just these two
  qasup status --json          the daemon's status JSON (same exit codes)""",
    "start": """examples:
  qasup start sanic            start one service (waits for its dependencies and readiness)
  qasup start rerank ocr""",
    "stop": """examples:
  qasup stop sanic             stop it; it stays stopped until started again""",
    "restart": """examples:
  qasup restart sanic
  qasup restart rerank --with-dependents   also restart the services that require rerank""",
    "logs": """examples:
  qasup logs sanic             last 100 lines of the service's log
  qasup logs sanic -n 20 -f    last 20 lines, then follow (Ctrl-C to stop)""",
    "wait-ready": """examples:
  qasup wait-ready                     wait up to 60s for every enabled service
  qasup wait-ready sanic --timeout 5m
  qasup wait-ready --timeout 0         check once (Docker: HEALTHCHECK CMD qasup wait-ready --timeout 0)

It also waits for the daemon's socket to appear, so it can run while the stack starts.
Exits 1 at once if a service it waits for has failed for good or is disabled by the plan.""",
    "events": """examples:
  qasup events                 every state transition as one JSON object per line, until Ctrl-C
  qasup events | jq -c 'select(.state == "failed")'""",
    "reload": """examples:
  qasup reload                 re-read qasup.toml and units, restart only what changed
Exit 2 if the new configuration is invalid; the old one then stays in force.""",
    "shutdown": """examples:
  qasup shutdown               begin the ordered shutdown and return
  qasup shutdown --wait        and wait until the daemon has stopped""",
}


def register(subparsers: Any) -> None:
    """Add the control verbs to an argparse ``subparsers`` object; each sets ``ctl_verb``."""

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=_EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(ctl_verb=name)
        return parser

    p = add("status", "show each service's state, pid, uptime, restarts, readiness time and last error")
    p.add_argument("names", nargs="*", metavar="NAME", help="services to show (default: all)")
    p.add_argument("--json", action="store_true", help="print the daemon's status JSON instead of the table")

    for verb, text in (("start", "start services"), ("stop", "stop services")):
        p = add(verb, text)
        p.add_argument("names", nargs="+", metavar="NAME")
    p = add("restart", "restart services")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "--with-dependents", action="store_true", help="also restart the services that require these"
    )

    p = add("logs", "print the last lines of a service's log, and follow it with -f")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", "--lines", type=_non_negative_int, default=100, metavar="N", help="lines to show (default 100)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output until Ctrl-C")

    p = add("wait-ready", "block until services are ready (usable as a Docker HEALTHCHECK)")
    p.add_argument("names", nargs="*", metavar="NAME", help="services to wait for (default: every enabled one)")
    p.add_argument(
        "--timeout", type=parse_timeout, default=60.0, metavar="DURATION",
        help="give up after this long (default 60s; 0 = check once)",
    )

    add("events", "stream state transitions as JSON lines")
    add("reload", "re-read the configuration and restart only changed services")

    p = add("shutdown", "stop every service in order and end the daemon")
    p.add_argument("--wait", action="store_true", help="return only once the daemon has stopped")
    p.add_argument(
        "--timeout", type=parse_timeout, default=120.0, metavar="DURATION",
        help="with --wait: give up after this long (default 120s)",
    )


VERBS = frozenset(_EXAMPLES)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the verb chosen by ``register``'s parsers; returns the exit code."""
    socket_path = str(getattr(args, "socket", None) or os.environ.get("QASUP_SOCKET") or ".qasup/qasup.sock")
    verb = _VERB_FUNCTIONS[args.ctl_verb]
    try:
        return verb(socket_path, args)
    except client.NoDaemon as exc:
        _err(f"{exc}; is `qasup up` running? (choose the socket with --socket or QASUP_SOCKET)")
        return EXIT_NO_DAEMON
    except client.ProtocolError as exc:
        _err(f"unexpected answer from the daemon: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK


def _err(message: str) -> None:
    print(f"qasup: {message}", file=sys.stderr)


def _silence_stdout() -> None:
    """After EPIPE on stdout (``| head``), point stdout at /dev/null so exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _error_of(payload: Any) -> str:
    if isinstance(payload, dict) and payload.get("error"):
        return str(payload["error"])
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace").strip()
    return str(payload)


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote(text: str, safe: str = "") -> str:
    """Percent-encode ``text`` for a URL path segment or query value (urllib.parse costs ~5 ms to import)."""
    allowed = _UNRESERVED | frozenset(safe)
    return "".join(ch if ch in allowed else "".join(f"%{b:02X}" for b in ch.encode("utf-8")) for ch in text)


def _names_query(names: Sequence[str]) -> str:
    return "?names=" + quote(",".join(names), safe=",") if names else ""


def _status_path(names: Sequence[str]) -> str:
    return "/v1/status" + _names_query(names)


# --------------------------------------------------------------------------- verbs


def _cmd_status(socket_path: str, args: argparse.Namespace) -> int:
    status, payload = client.request(socket_path, "GET", _status_path(args.names))
    if status != 200 or not isinstance(payload, dict):
        _err(_error_of(payload))
        return EXIT_FAILED
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        colour = _use_colour(sys.stdout)
        width = None
        if colour:
            import shutil

            width = shutil.get_terminal_size().columns
        print(render_status(payload, colour=colour, width=width))
    enabled = [s for s in payload.get("services") or [] if s.get("state") != "disabled"]
    return EXIT_OK if all(s.get("state") == "ready" for s in enabled) else EXIT_NOT_READY


def _cmd_action(socket_path: str, args: argparse.Namespace) -> int:
    verb = args.ctl_verb
    code = EXIT_OK
    for name in args.names:
        body = {"with_dependents": True} if verb == "restart" and args.with_dependents else None
        # No client time-out: starting waits for readiness (model loading takes minutes) and the
        # daemon bounds every action with the unit's own time-outs.
        status, payload = client.request(
            socket_path, "POST", f"/v1/services/{quote(name, safe='')}/{verb}", body, timeout=None
        )
        if 200 <= status < 300:
            state = payload.get("state") if isinstance(payload, dict) else None
            done = {"start": "started", "stop": "stopped", "restart": "restarted"}[verb]
            extra = ""
            if isinstance(payload, dict) and payload.get("restarted"):
                extra = " (with " + ", ".join(map(str, payload["restarted"])) + ")"
            print(f"{name}: {done}{extra}" + (f", now {state}" if state else ""))
        else:
            _err(f"{verb} {name}: {_error_of(payload)}")
            code = EXIT_FAILED
    return code


def _cmd_logs(socket_path: str, args: argparse.Namespace) -> int:
    path = f"/v1/services/{quote(args.name, safe='')}/logs?n={args.lines}"
    out = sys.stdout.buffer
    if not args.follow:
        status, payload = client.request(socket_path, "GET", path)
        if status != 200:
            _err(_error_of(payload))
            return EXIT_FAILED
        out.write(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
        out.flush()
        return EXIT_OK
    try:
        for chunk in client.stream_chunks(socket_path, path + "&follow=1"):
            out.write(chunk)
            out.flush()
    except client.RequestFailed as exc:
        _err(exc.message)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_events(socket_path: str, args: argparse.Namespace) -> int:
    try:
        for line in client.stream_lines(socket_path, "/v1/events"):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
    except client.RequestFailed as exc:
        _err(exc.message)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_reload(socket_path: str, args: argparse.Namespace) -> int:
    status, payload = client.request(socket_path, "POST", "/v1/reload", timeout=None)
    if status == 400:
        _err(f"new configuration refused, the old one stays in force:\n{_error_of(payload)}")
        return EXIT_INVALID_CONFIG
    if not 200 <= status < 300:
        _err(f"reload failed: {_error_of(payload)}")
        return EXIT_FAILED
    changed = payload.get("changed") if isinstance(payload, dict) else None
    if changed:
        print("reloaded; changed: " + ", ".join(map(str, changed)))
    else:
        print("reloaded; nothing changed")
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key != "changed" and value:
                print(f"  {key}: {', '.join(map(str, value)) if isinstance(value, list) else value}")
    return EXIT_OK


def _cmd_shutdown(socket_path: str, args: argparse.Namespace) -> int:
    status, payload = client.request(socket_path, "POST", "/v1/shutdown")
    if not 200 <= status < 300:
        _err(f"shutdown refused: {_error_of(payload)}")
        return EXIT_FAILED
    if not args.wait:
        print("shutdown begun")
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            client.request(socket_path, "GET", "/v1/status", timeout=2.0)
        except client.NoDaemon:
            print("daemon stopped")
            return EXIT_OK
        time.sleep(0.1)
    _err(f"the daemon still answers after {format_duration(args.timeout)}")
    return EXIT_FAILED


def _cmd_wait_ready(socket_path: str, args: argparse.Namespace) -> int:
    """Poll /v1/status until every awaited service is ready.

    Done client side: no extra endpoint, no connection slot held while waiting, and a poll every
    0.1-0.5 s costs the daemon little.  Fails at once when an awaited service has failed for good,
    is disabled, or the stack is stopping.
    """
    deadline = time.monotonic() + args.timeout
    interval = 0.05
    while True:
        remaining = deadline - time.monotonic()
        try:
            status, payload = client.request(
                socket_path, "GET", _status_path(args.names), timeout=max(1.0, min(remaining, 10.0))
            )
        except client.NoDaemon as exc:
            problem = str(exc)
        else:
            if status != 200 or not isinstance(payload, dict):
                _err(_error_of(payload))
                return EXIT_FAILED
            verdict, problem = _readiness(payload, args.names)
            if verdict is True:
                print("ready")
                return EXIT_OK
            if verdict is False:
                _err(problem)
                return EXIT_FAILED
        if time.monotonic() >= deadline:
            _err(f"not ready after {format_duration(args.timeout)}: {problem}")
            return EXIT_FAILED
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
        interval = min(interval * 2, 0.5)


def _readiness(payload: dict, names: Sequence[str]) -> tuple[bool | None, str]:
    """(True, _) all ready; (False, why) will not become ready; (None, what is pending)."""
    stack_state = (payload.get("stack") or {}).get("state")
    services = [s for s in payload.get("services") or [] if isinstance(s, dict)]
    if names:
        awaited = services
        for s in awaited:
            if s.get("state") == "disabled":
                return False, f"{s.get('name')} is disabled by the plan and will never be ready"
    else:
        awaited = [s for s in services if s.get("state") != "disabled"]
    for s in awaited:
        if s.get("state") == "failed":
            why = _last_error(s)
            return False, f"{s.get('name')} failed" + (f": {why}" if why != "-" else "")
    if all(s.get("state") == "ready" for s in awaited):
        return True, ""
    if stack_state in ("stopping", "aborted"):
        return False, f"the stack is {stack_state}"
    pending = ", ".join(f"{s.get('name')} ({s.get('state')})" for s in awaited if s.get("state") != "ready")
    return None, f"waiting for {pending}"


_VERB_FUNCTIONS: dict[str, Callable[[str, argparse.Namespace], int]] = {
    "status": _cmd_status,
    "start": _cmd_action,
    "stop": _cmd_action,
    "restart": _cmd_action,
    "logs": _cmd_logs,
    "wait-ready": _cmd_wait_ready,
    "events": _cmd_events,
    "reload": _cmd_reload,
    "shutdown": _cmd_shutdown,
}
