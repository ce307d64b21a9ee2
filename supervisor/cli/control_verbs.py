"""The control verbs of the qasup CLI: status, start, stop, restart, logs, wait-ready, events, reload, shutdown.

They talk to a running ``qasup up`` through its control socket (``supervisor.control.client``); their
parsers are :mod:`supervisor.cli.control_args`' (``register``), the tables and durations they print
:mod:`supervisor.cli.render`'s. Only the standard library is imported, and little of it, so that
``qasup status`` starts fast.

Exit codes (interface.md):

=============  ==================================================================================
status         0 every enabled service (of those named) is ready; 3 some are not; 1 unknown
               service; 4 no daemon answering
start/stop/    0 done; 1 failed, unknown service or no answer within the API's action deadline (504);
restart        4 no daemon
logs           0; 1 unknown service; 4 no daemon
wait-ready     0 ready; 1 timed out, failed, or no daemon by the deadline (1, not 4, so that it
               works as a Docker HEALTHCHECK, where only 0 and 1 are meaningful)
events         0 when the daemon ends the stream; 4 no daemon
reload         0 reloaded; 2 new configuration invalid (the old one stays); 1 other failure; 4
shutdown       0 shutdown begun (with --wait: daemon gone); 1 --wait timed out; 4 no daemon
=============  ==================================================================================

Every verb also exits 4 when the daemon stays overloaded: a 503 (its connection or stream slots are full)
is tried again for ``client.BUSY_RETRY_S`` (2 s) with a short back-off first; wait-ready keeps polling.
"""

from __future__ import annotations

import os
import sys
import time

from supervisor.cli.render import format_duration, last_error, render_status, use_colour
from supervisor.control import client
from supervisor.protocol import (
    DEFAULT_SOCKET_NAME,
    DEFAULT_STATE_DIR,
    SOCKET_ENV,
    Exit,
    ServiceState,
    StackState,
)

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are strings here anyway
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from types import SimpleNamespace
    from typing import Any, TypeAlias

    Args: TypeAlias = argparse.Namespace | SimpleNamespace   # argparse's, or cli.main.plain_status's

    from supervisor.protocol import StatusPayload

__all__ = ["run"]

_DEFAULT_SOCKET = os.path.join(DEFAULT_STATE_DIR, DEFAULT_SOCKET_NAME)
"""When neither --socket nor $QASUP_SOCKET is given and no stack was looked for (cli.main resolves it)."""


def run(args: Args) -> int:
    """Run the verb chosen by ``register``'s parsers; returns the exit code."""
    socket_path = str(getattr(args, "socket", None) or os.environ.get(SOCKET_ENV) or _DEFAULT_SOCKET)
    verb = _VERB_FUNCTIONS[args.ctl_verb]
    try:
        return verb(socket_path, args)
    except client.NoDaemon as exc:
        _err(f"{exc}; is `qasup up` running? (choose the socket with --socket or {SOCKET_ENV})")
        return Exit.NO_DAEMON
    except client.Overloaded as exc:
        _err(f"{exc}; try again later")
        return Exit.NO_DAEMON
    except client.ProtocolError as exc:
        _err(f"unexpected answer from the daemon: {exc}")
        return Exit.FAILED
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return Exit.OK


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


def _json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


def _error_of(payload: Any) -> str:
    if isinstance(payload, bytes) and payload.lstrip().startswith(b"{"):
        import json

        try:
            payload = json.loads(payload)
        except ValueError:
            pass
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


def _as_status(payload: Any) -> StatusPayload:
    """The JSON object of a ``GET /v1/status`` answer, seen through the status type. Not validated: its
    readers use ``.get`` for the keys that a daemon of another version may lack."""
    return payload


# --------------------------------------------------------------------------- verbs


def _cmd_status(socket_path: str, args: Args) -> int:
    if getattr(args, "watch", False):
        if args.json:
            _err("status: --watch draws the table; it does not go with --json")
            return Exit.CONFIG
        from supervisor.cli.watch import watch_status

        return watch_status(socket_path, _status_path(args.names), as_status=_as_status,
                            show_disabled=bool(getattr(args, "all", False) or args.names))
    if not args.json:
        colour = use_colour(sys.stdout)
        width = None
        if colour:
            import shutil

            width = shutil.get_terminal_size().columns
        show_disabled = bool(getattr(args, "all", False) or args.names)
        # the daemon draws the table (no JSON to import, encode and decode: ~3 ms here, ~10 ms for 1000 rows)
        query = ("&names=" + quote(",".join(args.names), safe=",") if args.names else "") + (
            "&all=1" if show_disabled else "") + ("&colour=1" if colour else "") + (
            f"&columns={width}" if width else "")
        status, headers, body = client.fetch(socket_path, "GET", "/v1/status?format=table" + query)
        if status == 200 and headers.get("content-type", "").startswith("text/plain"):
            sys.stdout.write(body.decode("utf-8", "replace"))
            sys.stdout.flush()
            return Exit.OK if headers.get("x-qasup-not-ready", "0") == "0" else Exit.NOT_READY
        if status != 400:   # 400: a daemon of an older version, which takes no format=: draw it here
            _err(_error_of(body))
            return Exit.FAILED
    status, payload = client.request(socket_path, "GET", _status_path(args.names))
    if status != 200 or not isinstance(payload, dict):
        _err(_error_of(payload))
        return Exit.FAILED
    if args.json:
        import json

        print(json.dumps(payload, indent=2))
    else:
        print(render_status(_as_status(payload), colour=colour, width=width, show_disabled=show_disabled))
    enabled = [s for s in payload.get("services") or [] if s.get("state") != ServiceState.DISABLED]
    return Exit.OK if all(s.get("state") == ServiceState.READY for s in enabled) else Exit.NOT_READY


def _cmd_action(socket_path: str, args: Args) -> int:
    verb = args.ctl_verb
    code = Exit.OK
    for name in args.names:
        body = {"with_dependents": True} if verb == "restart" and args.with_dependents else None
        # No client time-out: starting waits for readiness (model loading takes minutes) and the
        # daemon bounds every action with the unit's own time-outs.
        status, payload = client.request(socket_path, "POST", f"/v1/services/{quote(name, safe='')}/{verb}", body,
                                         timeout=None)
        if 200 <= status < 300:
            state = payload.get("state") if isinstance(payload, dict) else None
            done = {"start": "started", "stop": "stopped", "restart": "restarted"}[verb]
            extra = ""
            if isinstance(payload, dict) and payload.get("restarted"):
                extra = " (with " + ", ".join(map(str, payload["restarted"])) + ")"
            print(f"{name}: {done}{extra}" + (f", now {state}" if state else ""))
        else:
            _err(f"{verb} {name}: {_error_of(payload)}")
            code = Exit.FAILED
    return code


def _cmd_logs(socket_path: str, args: Args) -> int:
    path = f"/v1/services/{quote(args.name, safe='')}/logs?n={args.lines}"
    out = sys.stdout.buffer
    if not args.follow:
        status, payload = client.request(socket_path, "GET", path)
        if status != 200:
            _err(_error_of(payload))
            return Exit.FAILED
        out.write(payload if isinstance(payload, bytes) else _json_bytes(payload))
        out.flush()
        return Exit.OK
    try:
        for chunk in client.stream_chunks(socket_path, path + "&follow=1"):
            out.write(chunk)
            out.flush()
    except client.RequestFailed as exc:
        _err(exc.message)
        return Exit.FAILED
    return Exit.OK


def _cmd_events(socket_path: str, args: Args) -> int:
    try:
        for line in client.stream_lines(socket_path, "/v1/events"):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
    except client.RequestFailed as exc:
        _err(exc.message)
        return Exit.FAILED
    return Exit.OK


def _cmd_reload(socket_path: str, args: Args) -> int:
    status, payload = client.request(socket_path, "POST", "/v1/reload", timeout=None)
    if status == 400:
        _err(f"new configuration refused, the old one stays in force:\n{_error_of(payload)}")
        return Exit.CONFIG
    if not 200 <= status < 300:
        _err(f"reload failed: {_error_of(payload)}")
        return Exit.FAILED
    changed = payload.get("changed") if isinstance(payload, dict) else None
    if changed:
        print("reloaded; changed: " + ", ".join(map(str, changed)))
    else:
        print("reloaded; nothing changed")
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key != "changed" and value:
                print(f"  {key}: {', '.join(map(str, value)) if isinstance(value, list) else value}")
    return Exit.OK


def _cmd_shutdown(socket_path: str, args: Args) -> int:
    status, payload = client.request(socket_path, "POST", "/v1/shutdown")
    if not 200 <= status < 300:
        _err(f"shutdown refused: {_error_of(payload)}")
        return Exit.FAILED
    if not args.wait:
        print("shutdown begun")
        return Exit.OK
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            client.request(socket_path, "GET", "/v1/status", timeout=2.0)
        except client.NoDaemon:
            print("daemon stopped")
            return Exit.OK
        except client.Overloaded:
            pass  # still there, and busy
        time.sleep(0.1)
    _err(f"the daemon still answers after {format_duration(args.timeout)}")
    return Exit.FAILED


def _cmd_wait_ready(socket_path: str, args: Args) -> int:
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
            status, payload = client.request(socket_path, "GET", _status_path(args.names),
                                             timeout=max(1.0, min(remaining, 10.0)))
        except (client.NoDaemon, client.Overloaded) as exc:
            problem = str(exc)
        else:
            if status != 200 or not isinstance(payload, dict):
                _err(_error_of(payload))
                return Exit.FAILED
            verdict, problem = _readiness(_as_status(payload), args.names)
            if verdict is True:
                print("ready")
                return Exit.OK
            if verdict is False:
                _err(problem)
                return Exit.FAILED
        if time.monotonic() >= deadline:
            _err(f"not ready after {format_duration(args.timeout)}: {problem}")
            return Exit.FAILED
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
        interval = min(interval * 2, 0.5)


def _readiness(payload: StatusPayload, names: Sequence[str]) -> tuple[bool | None, str]:
    """(True, _) all ready; (False, why) will not become ready; (None, what is pending).

    Keys missing from the payload (a daemon of another version) count as "not ready yet"."""
    stack_state = (payload.get("stack") or {}).get("state")
    services = [s for s in payload.get("services") or [] if isinstance(s, dict)]
    if names:
        awaited = services
        for s in awaited:
            if s.get("state") == ServiceState.DISABLED:
                return False, f"{s.get('name')} is disabled by the plan and will never be ready"
    else:
        awaited = [s for s in services if s.get("state") != ServiceState.DISABLED]
    for s in awaited:
        if s.get("state") == ServiceState.FAILED:
            why = last_error(s)
            return False, f"{s.get('name')} failed" + (f": {why}" if why != "-" else "")
    if all(s.get("state") == ServiceState.READY for s in awaited):
        return True, ""
    if stack_state in (StackState.STOPPING, StackState.ABORTED):
        return False, f"the stack is {stack_state}"
    pending = ", ".join(f"{s.get('name')} ({s.get('state')})" for s in awaited
                        if s.get("state") != ServiceState.READY)
    return None, f"waiting for {pending}"


_VERB_FUNCTIONS: dict[str, Callable[[str, Args], int]] = {
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
