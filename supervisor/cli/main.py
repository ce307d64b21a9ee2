"""The ``qasup`` command line: parses arguments, finds the control socket, and dispatches to a verb.

Start-up cost matters (``qasup status`` runs as a health check): this module imports only the standard
library (and :mod:`supervisor.protocol`) at top level; each verb imports what it needs. The configuration
verbs live in :mod:`supervisor.cli.config_verbs`; the control verbs in :mod:`supervisor.cli.control_verbs`,
which reach a running daemon only through its socket.
"""

from __future__ import annotations

import sys

# The console script (``qasup up`` as a container's PID 1): block SIGTERM/SIGINT/SIGHUP before the imports below,
# as supervisor/__main__.py does for ``python -m supervisor`` (why: supervisor.proc.kernel.hold_signals).
if sys.argv[0].rpartition("/")[2] == "qasup" and "up" in sys.argv[1:]:
    import _signal  # type: ignore[import-not-found]

    _signal.pthread_sigmask(_signal.SIG_BLOCK, (15, 2, 1))   # supervisor.proc.kernel.HELD_SIGNALS

import os  # noqa: E402

from supervisor.cli.flags import CONFIG_VERBS
from supervisor.protocol import DEFAULT_SOCKET_NAME, DEFAULT_STATE_DIR, SOCKET_ENV, Exit

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are strings here anyway
if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace
    from typing import Any

_STACK_FILE = "qasup.toml"  # as supervisor.config.loader.STACK_FILE, which is too heavy to import here


def _fast_verb(argv: list[str]) -> str | None:
    """The verb of a plain invocation (no help asked), else None."""
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
        if "-h" in argv or "--help" in argv:
            return None
        return a
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """argparse's parser of the qasup command line (:func:`supervisor.cli.parser.build_parser`); ``only``: just
    that verb's."""
    from supervisor.cli import parser

    return parser.build_parser(only)


def main(argv: list[str] | None = None) -> int:
    held = argv is None and "up" in sys.argv[1:]   # then the shutdown signals were blocked at start
    argv = sys.argv[1:] if argv is None else argv
    args: argparse.Namespace | SimpleNamespace | None = plain_status(argv)
    if args is None:   # every other command line: argparse (~10 ms to import and build)
        parser = build_parser(only=_fast_verb(argv))
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            _release_unless_up(held, None)
            raise
        _release_unless_up(held, args.verb)
        if not args.verb:
            parser.print_help()
            return Exit.CONFIG
    try:
        if args.verb in CONFIG_VERBS:
            from supervisor.cli import config_verbs as commands

            code: int = getattr(commands, f"cmd_{args.verb}")(args)
            if held and args.verb == "up":
                _exit_now(code)
            return code
        args.socket = resolve_socket(args)
        from supervisor.cli import control_verbs as ctl

        return ctl.run(args)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:
        return Exit.OK


def _exit_now(code: int) -> None:
    """``qasup up`` as a program (not ``main([...])`` from Python) is done: its services are gone, its files
    written and closed, its threads idle. Exit without the interpreter's teardown, which frees every object
    of every module one by one (~100 ms here, which a container's stop and a restart loop wait for)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


_STATUS_FLAGS = {"--json": "json", "--all": "all", "--watch": "watch", "-w": "watch"}
_PATH_OPTIONS = ("--config", "--socket")


def plain_status(argv: list[str]) -> SimpleNamespace | None:
    """``qasup status`` parsed without argparse, for the plain forms a health check or a person types: the
    ``--config``/``--socket`` options (before or after the verb), ``--json``, ``--all``, ``--watch``/``-w`` and
    service names in one run. The result has the attributes argparse's Namespace would have, with the same
    values; anything else (help, abbreviations, ``--``, an option between names, a value that looks like an
    option) returns None and argparse parses it, with its messages. (``tests/test_cli_startup.py`` checks both
    parsers against each other on generated command lines.)"""
    from types import SimpleNamespace

    values: dict[str, Any] = {"config": None, "socket": None}
    sub: dict[str, Any] = {}
    names: list[str] = []
    verb_seen = False
    names_ended = False
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        target = sub if verb_seen else values
        option, eq, value = a.partition("=")
        if option in _PATH_OPTIONS:
            if not eq:
                if i >= len(argv) or argv[i].startswith("-"):
                    return None
                value = argv[i]
                i += 1
            target[option[2:]] = value
            names_ended = names_ended or bool(names)
        elif not verb_seen:
            if a != "status":
                return None
            verb_seen = True
        elif a in _STATUS_FLAGS:
            sub[_STATUS_FLAGS[a]] = True
            names_ended = names_ended or bool(names)
        elif a.startswith("-") or names_ended:
            return None
        else:
            names.append(a)
    if not verb_seen:
        return None
    values.update(sub)
    return SimpleNamespace(verb="status", ctl_verb="status", names=names, json=sub.get("json", False),
                           all=sub.get("all", False), watch=sub.get("watch", False),
                           config=values["config"], socket=values["socket"])


def _release_unless_up(held: bool, verb: str | None) -> None:
    """``up`` keeps SIGTERM/SIGINT/SIGHUP blocked until the daemon's handlers are installed; any other verb
    (``qasup logs up``) gets them back at once, and holds them from here on when called as ``main(["up"])``."""
    if verb != "up" and not held:
        return   # the common case (``qasup status``): nothing to import
    from supervisor.proc import kernel

    if verb == "up":
        kernel.hold_signals()
    else:
        kernel.release_signals()


def resolve_socket(args: argparse.Namespace | SimpleNamespace) -> str:
    """--socket, else $QASUP_SOCKET, else <state_dir>/qasup.sock of the stack found from here (the state folder
    read from the stack file's ``[stack] state_dir`` without validating the rest of it)."""
    if getattr(args, "socket", None):
        return str(args.socket)
    if os.environ.get(SOCKET_ENV):
        return os.environ[SOCKET_ENV]
    from pathlib import Path  # here: ``qasup status`` with --socket or $QASUP_SOCKET never needs it (~8 ms)

    config = Path(args.config) if getattr(args, "config", None) else None
    root = Path.cwd()
    file = None
    if config is not None:
        file = config if not config.is_dir() else config / _STACK_FILE
        root = file.parent
    elif (root / _STACK_FILE).is_file():
        file = root / _STACK_FILE
    state = DEFAULT_STATE_DIR
    if file is not None and file.is_file():
        import tomllib

        try:
            state = tomllib.loads(file.read_text()).get("stack", {}).get("state_dir", state)
        except (OSError, ValueError, AttributeError):
            pass
    p = Path(state)
    return str((p if p.is_absolute() else root.resolve() / p) / DEFAULT_SOCKET_NAME)


if __name__ == "__main__":
    sys.exit(main())
