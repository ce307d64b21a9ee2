"""The command line of the control verbs: their argparse parsers, with help and examples, and the types of
their values (``--timeout DURATION``, ``-n N``).

:func:`register` adds them to the ``qasup`` parser; :mod:`supervisor.cli.control_verbs` runs what they parse.
Standard library only (argparse), so that ``qasup status`` starts fast.
"""

from __future__ import annotations

import argparse

from supervisor.protocol import parse_duration

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are strings here anyway
if TYPE_CHECKING:
    from typing import Any

__all__ = ["VERBS", "parse_timeout", "register"]


def parse_timeout(text: str) -> float:
    """``"60s"``, ``"500ms"``, ``"5m"``, ``"1h"``, ``"1m30s"`` or a bare number of seconds (``--timeout``).

    The grammar is :func:`supervisor.protocol.parse_duration`'s; the messages speak of a timeout."""
    try:
        return parse_duration(text, bare_seconds=True)
    except ValueError:
        pass
    if not text.strip():
        raise argparse.ArgumentTypeError("empty timeout")
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 60s, 500ms, 5m or 1h") from None
    raise argparse.ArgumentTypeError(f"{text!r}: a timeout cannot be negative")  # a number, not one >= 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value



_EXAMPLES = {
    "status": """examples:
  qasup status                 table of the plan's services; exit 0 only when all of them are ready
  qasup status --all           also the services the plan disabled, with the reason
  qasup status sanic llm       just these two
  qasup status --json          the daemon's status JSON (same exit codes)
  qasup status --watch         the table, drawn again in place every second (Ctrl-C ends it: exit 130)""",
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
        parser = subparsers.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                                       epilog=_EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.set_defaults(ctl_verb=name)
        return parser

    p = add("status", "show each service's state, pid, uptime, restarts, readiness time and last error")
    p.add_argument("names", nargs="*", metavar="NAME", help="services to show (default: all)")
    p.add_argument("--json", action="store_true", help="print the daemon's status JSON instead of the table "
                   "(every service, disabled ones included)")
    p.add_argument("--all", action="store_true", help="also list the services the plan disabled (with the reason)")
    p.add_argument("--watch", "-w", action="store_true", help="draw the table again every second until Ctrl-C")

    for verb, text in (("start", "start services"), ("stop", "stop services")):
        p = add(verb, text)
        p.add_argument("names", nargs="+", metavar="NAME")
    p = add("restart", "restart services")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--with-dependents", action="store_true", help="also restart the services that require these")

    p = add("logs", "print the last lines of a service's log, and follow it with -f")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", "--lines", type=_non_negative_int, default=100, metavar="N", help="lines to show (default 100)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output until Ctrl-C")

    p = add("wait-ready", "block until services are ready (usable as a Docker HEALTHCHECK)")
    p.add_argument("names", nargs="*", metavar="NAME", help="services to wait for (default: every enabled one)")
    p.add_argument("--timeout", type=parse_timeout, default=60.0, metavar="DURATION",
                   help="give up after this long (default 60s; 0 = check once)")

    add("events", "stream state transitions as JSON lines")
    add("reload", "re-read the configuration and restart only changed services")

    p = add("shutdown", "stop every service in order and end the daemon")
    p.add_argument("--wait", action="store_true", help="return only once the daemon has stopped")
    p.add_argument("--timeout", type=parse_timeout, default=120.0, metavar="DURATION",
                   help="with --wait: give up after this long (default 120s)")


VERBS = frozenset(_EXAMPLES)
