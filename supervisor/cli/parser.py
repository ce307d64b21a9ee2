"""The argparse parsers of the qasup command line (``build_parser``): the top level, the configuration verbs'
(``up``, ``check``, ``plan``) and, from :mod:`supervisor.cli.control_args`, the control verbs'. Imported only when
a command line is not the plain ``qasup status`` that :func:`supervisor.cli.main.plain_status` reads itself.
"""

from __future__ import annotations

import argparse
import os
import sys

from supervisor.cli.flags import CONFIG_VERBS, RUNSH_FLAGS, SUBSET_FLAGS
from supervisor.protocol import DEFAULT_SOCKET_NAME, SOCKET_ENV

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["EPILOG", "build_parser"]

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
                   help=f"control socket (default: ${SOCKET_ENV}, else <state_dir>/{DEFAULT_SOCKET_NAME})")


def _add_plan_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plan inputs (the run.sh flags; override the stack file's [plan] table)")
    for short, long, dest, typ, help_ in RUNSH_FLAGS:
        g.add_argument(short, long, dest=dest, type=typ, default=None, help=help_)
    g.add_argument("--gpus", metavar="SPEC", default=None,
                   help='declared GPU inventory instead of NVML: "none", a JSON file, or inline JSON '
                        '(also $QASUP_GPUS)')
    sub = p.add_argument_group("subset (one stack split across machines: the part this one runs)")
    for long, dest, help_ in SUBSET_FLAGS:
        sub.add_argument(long, dest=dest, metavar="NAME[,NAME...]", action="append", default=None, help=help_)


class _OnlyVerb:
    """A stand-in for argparse's subparsers object that builds the parser of one verb only.

    ``qasup status`` runs as a health check: building all the other verbs' parsers costs more than the
    request itself."""

    def __init__(self, subparsers: argparse._SubParsersAction[Any], verb: str) -> None:
        self._sub, self._verb = subparsers, verb

    def add_parser(self, name: str, **kw: Any) -> argparse.ArgumentParser:
        if name == self._verb:
            return self._sub.add_parser(name, **kw)
        return _Ignored()  # type: ignore[return-value]


class _Ignored:
    """What :class:`_OnlyVerb` gives for the verbs not asked for: takes every call (``add_argument``,
    ``add_argument_group``, ``set_defaults``, ...) and does nothing, so their arguments cost nothing."""

    def __getattr__(self, name: str) -> Any:
        return self._ignore

    def _ignore(self, *args: Any, **kwargs: Any) -> _Ignored:
        return self


def _terminal_width() -> int:
    """What ``shutil.get_terminal_size().columns`` says ($COLUMNS, else stdout's terminal, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose formatter learns the terminal width without ``shutil``: argparse makes a
    formatter at every ``add_argument``, and its own imports shutil (with bz2, lzma and zlib: ~3 ms and
    ~0.3 MiB that ``qasup up`` kept for its whole life)."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        return self.formatter_class(prog=self.prog, width=_terminal_width() - 2)  # type: ignore[call-arg]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qasup", description="qasup: a process supervisor for GPU question-answering stacks.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from supervisor import __version__

    parser.add_argument("--version", action="version", version=f"qasup {__version__}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    if only is not None:
        from supervisor.cli import control_args

        if only in control_args.VERBS:
            control_args.register(_OnlyVerb(sub, only))
            for p in sub.choices.values():
                _add_common(p, top=False)
            return parser
    fmt = argparse.RawDescriptionHelpFormatter
    verbs = _OnlyVerb(sub, only) if only in CONFIG_VERBS else sub   # ``up`` builds its own parser only

    up = verbs.add_parser("up", help="run the stack in the foreground", formatter_class=fmt,
                        description="Plan, prepare, start in dependency order, supervise; SIGTERM/SIGINT = ordered "
                                    "shutdown (a second SIGINT kills at once).",
                        epilog="examples:\n  qasup up\n  qasup up -b vllm -m Qwen-7B -s 7B -i 0,1\n"
                               "  qasup up --listen 127.0.0.1:8790   (needs QASUP_TOKEN, >= 20 characters)\n"
                               "  qasup up --http 0.0.0.0:9100       (status page at /, Prometheus at /metrics)\n"
                               "exit: 0 clean shutdown; 1 aborted; 2 bad configuration")
    _add_common(up, top=False)
    _add_plan_flags(up)
    up.add_argument("--listen", metavar="HOST:PORT", default=None,
                    help="also serve the control API on TCP (requires QASUP_TOKEN)")
    up.add_argument("--http", metavar="HOST:PORT", default=None,
                    help="serve the read-only status page, /metrics, /v1/status and /v1/events there, without a "
                         "token (default: [stack] http)")
    up.add_argument("--no-echo", action="store_true", help="do not copy service output to stdout")

    ck = verbs.add_parser("check", help="validate the stack file and every unit", formatter_class=fmt,
                        description="Prints FILE: KEY: message for every problem.",
                        epilog="examples:\n  qasup check\n  qasup check -b vllm -m Qwen-7B\nexit: 0 valid; 2 invalid")
    _add_common(ck, top=False)
    _add_plan_flags(ck)

    pl = verbs.add_parser("plan", help="show the GPU plan and start order", formatter_class=fmt,
                        description="The GPU plan and the waves of the start order, without starting anything.",
                        epilog="examples:\n  qasup plan\n  qasup plan --json -b hf -m chatglm3-6b -s 6B\n"
                               "exit: 0 feasible; 1 infeasible; 2 bad configuration")
    _add_common(pl, top=False)
    _add_plan_flags(pl)
    pl.add_argument("--json", action="store_true", help="machine-readable output")

    if only in CONFIG_VERBS:
        return parser
    from supervisor.cli import control_args

    control_args.register(sub)
    for name, p in sub.choices.items():
        if name not in CONFIG_VERBS:
            _add_common(p, top=False)
    return parser
