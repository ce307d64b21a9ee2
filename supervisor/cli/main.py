"""The ``qasup`` command line: parses arguments and dispatches to a verb.

Start-up cost matters (``qasup status`` runs as a health check): this module imports only the standard
library at top level; each verb imports what it needs. Control verbs live in :mod:`supervisor.cli.control_verbs` and reach
a running daemon only through its socket.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from supervisor.cli.flags import RUNSH_FLAGS

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


EPILOG = """\
examples:
  qasup check                                  validate qasup.toml and services.d/*.toml
  qasup plan -b vllm -m Qwen-7B -s 7B --gpus '[{"index":0,"name":"RTX 4090","memory_total_mib":24564}]'
  qasup up -i 0,1 -b vllm -m Qwen-7B           run the stack in the foreground (PID 1 in a container)
  qasup status                                 one row per service (exit 0 when all are ready)
  qasup restart sanic                          restart one service
  qasup logs sanic -n 50 -f                    last 50 lines, then follow
  qasup wait-ready --timeout 60s               block until the stack is ready (Docker HEALTHCHECK)

exit codes: 0 ok; 1 failed / aborted / infeasible plan; 2 bad configuration or usage;
            3 some services not ready (status); 4 no daemon answering
"""


def _add_common(p: argparse.ArgumentParser, top: bool) -> None:
    d = None if top else argparse.SUPPRESS
    p.add_argument("--config", metavar="FILE", default=d,
                   help="the stack file (default: ./qasup.toml, else ./services.d)")
    p.add_argument("--socket", metavar="PATH", default=d,
                   help="control socket (default: $QASUP_SOCKET, else <state_dir>/qasup.sock)")


def _add_plan_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plan inputs (the run.sh flags; override the stack file's [plan] table)")
    for short, long, dest, typ, help_ in RUNSH_FLAGS:
        g.add_argument(short, long, dest=dest, type=typ, default=None, help=help_)
    g.add_argument("--gpus", metavar="SPEC", default=None,
                   help='declared GPU inventory instead of NVML: "none", a JSON file, or inline JSON '
                        '(also $QASUP_GPUS)')


class _OnlyVerb:
    """A stand-in for argparse's subparsers object that builds the parser of one verb only.

    ``qasup status`` runs as a health check: building all the other verbs' parsers costs more than the
    request itself."""

    def __init__(self, subparsers: Any, verb: str) -> None:
        self._sub, self._verb = subparsers, verb

    def add_parser(self, name: str, **kw: Any) -> argparse.ArgumentParser:
        if name == self._verb:
            return self._sub.add_parser(name, **kw)
        return argparse.ArgumentParser(add_help=False)


def _fast_verb(argv: list[str]) -> str | None:
    """The control verb of a plain invocation (no help asked), else None."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "--socket"):
            i += 2
            continue
        if a.startswith(("--config=", "--socket=")):
            i += 1
            continue
        if a.startswith("-"):
            return None
        if a in ("up", "check", "plan") or "-h" in argv or "--help" in argv:
            return None
        return a
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qasup", description="qasup: a process supervisor for GPU question-answering stacks.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from supervisor import __version__

    parser.add_argument("--version", action="version", version=f"qasup {__version__}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    if only is not None:
        from supervisor.cli import control_verbs as ctl

        if only in ctl.VERBS:
            ctl.register(_OnlyVerb(sub, only))
            for p in sub.choices.values():
                _add_common(p, top=False)
            return parser
    fmt = argparse.RawDescriptionHelpFormatter

    up = sub.add_parser("up", help="run the stack in the foreground", formatter_class=fmt,
                        description="Plan, prepare, start in dependency order, supervise; SIGTERM/SIGINT = ordered "
                                    "shutdown (a second SIGINT kills at once).",
                        epilog="examples:\n  qasup up\n  qasup up -b vllm -m Qwen-7B -s 7B -i 0,1\n"
                               "  qasup up --listen 127.0.0.1:8790   (needs QASUP_TOKEN, >= 20 characters)\n"
                               "exit: 0 clean shutdown; 1 aborted; 2 bad configuration")
    _add_common(up, top=False)
    _add_plan_flags(up)
    up.add_argument("--listen", metavar="HOST:PORT", default=None,
                    help="also serve the control API on TCP (requires QASUP_TOKEN)")
    up.add_argument("--no-echo", action="store_true", help="do not copy service output to stdout")

    ck = sub.add_parser("check", help="validate the stack file and every unit", formatter_class=fmt,
                        description="Prints FILE: KEY: message for every problem.",
                        epilog="examples:\n  qasup check\n  qasup check -b vllm -m Qwen-7B\nexit: 0 valid; 2 invalid")
    _add_common(ck, top=False)
    _add_plan_flags(ck)

    pl = sub.add_parser("plan", help="show the GPU plan and start order", formatter_class=fmt,
                        description="The GPU plan and the waves of the start order, without starting anything.",
                        epilog="examples:\n  qasup plan\n  qasup plan --json -b hf -m chatglm3-6b -s 6B\n"
                               "exit: 0 feasible; 1 infeasible; 2 bad configuration")
    _add_common(pl, top=False)
    _add_plan_flags(pl)
    pl.add_argument("--json", action="store_true", help="machine-readable output")

    try:
        from supervisor.cli import control_verbs as ctl
    except ImportError:  # pragma: no cover - during bootstrap only
        return parser
    ctl.register(sub)
    for name, p in sub.choices.items():
        if name not in ("up", "check", "plan"):
            _add_common(p, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=_fast_verb(argv))
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return EXIT_CONFIG
    try:
        if args.verb in ("up", "check", "plan"):
            from supervisor.cli import config_verbs as commands

            return getattr(commands, f"cmd_{args.verb}")(args)
        args.socket = resolve_socket(args)
        from supervisor.cli import control_verbs as ctl

        return ctl.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def resolve_socket(args: argparse.Namespace) -> Path:
    """--socket, else $QASUP_SOCKET, else <state_dir>/qasup.sock of the stack found from here."""
    if getattr(args, "socket", None):
        return Path(args.socket)
    if os.environ.get("QASUP_SOCKET"):
        return Path(os.environ["QASUP_SOCKET"])
    config = Path(args.config) if getattr(args, "config", None) else None
    root = Path.cwd()
    file = None
    if config is not None:
        file = config if not config.is_dir() else config / "qasup.toml"
        root = file.parent
    elif (root / "qasup.toml").is_file():
        file = root / "qasup.toml"
    state = ".qasup"
    if file is not None and file.is_file():
        import tomllib

        try:
            state = tomllib.loads(file.read_text()).get("stack", {}).get("state_dir", state)
        except (OSError, ValueError, AttributeError):
            pass
    p = Path(state)
    return (p if p.is_absolute() else root.resolve() / p) / "qasup.sock"


if __name__ == "__main__":
    sys.exit(main())
