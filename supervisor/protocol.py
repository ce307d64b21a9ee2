"""What the daemon and the CLI agree on: states, the status shape, exit codes, names, secret masking,
the control socket's default place, and the small value grammars both sides parse (durations, HOST:PORT).

Each of these rules has its owner here and nowhere else. Standard library only, and little of it (``enum``
and ``re``, which argparse loads anyway), so that ``qasup status`` stays fast to start.
"""

from __future__ import annotations

import enum
import re

TYPE_CHECKING = False  # typing costs ~5 ms to import; the CLI imports this module
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, TypedDict

__all__ = [
    "DEFAULT_SOCKET_NAME",
    "DEFAULT_STATE_DIR",
    "MASK",
    "MIN_TOKEN_LENGTH",
    "NAME_RE",
    "NOT_SECRET",
    "RUNNING_STATES",
    "SOCKET_ENV",
    "TOKEN_ENV",
    "Exit",
    "ServiceState",
    "StackState",
    "is_secret",
    "mask_env",
    "mask_secrets",
    "parse_duration",
    "parse_hostport",
    "service_status",
    "stack_status",
]


class ServiceState(enum.StrEnum):
    """A service's state (interface.md). A ``str``: it is written as is in JSON and compared with text."""

    DISABLED = "disabled"   # the plan left it out
    WAITING = "waiting"     # for what it requires (or after a stop by a user, until started)
    PREPARING = "preparing"
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"     # waiting to be restarted
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


RUNNING_STATES = frozenset({ServiceState.PREPARING, ServiceState.STARTING, ServiceState.READY,
                            ServiceState.STOPPING})


class StackState(enum.StrEnum):
    """The state of the whole stack."""

    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    ABORTED = "aborted"


class Exit(enum.IntEnum):
    """Exit codes of the ``qasup`` command (interface.md; the README's table says which verb uses which)."""

    OK = 0
    FAILED = 1          # up: aborted; a control verb failed or named an unknown service; wait-ready timed out
    CONFIG = 2          # bad configuration or usage
    NOT_READY = 3       # status: some enabled services are not ready
    NO_DAEMON = 4       # no daemon answers on the control socket
    KILLED = 5          # up: stopped, but some service had to be SIGKILLed ([stop] timeout or stop_budget)
    INTERRUPTED = 130   # interrupted (Ctrl-C)


# --------------------------------------------------------------------------- names

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
"""A service name: lower case, digits, ``_ . -``; at most 63 characters; it is a file name and a URL part."""

DEFAULT_STATE_DIR = ".qasup"
DEFAULT_SOCKET_NAME = "qasup.sock"   # in the state folder
SOCKET_ENV = "QASUP_SOCKET"
TOKEN_ENV = "QASUP_TOKEN"
MIN_TOKEN_LENGTH = 20                # for the TCP listener's bearer token


# --------------------------------------------------------------------------- secrets

_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
NOT_SECRET = frozenset({"OFFCUT_TOKEN"})
"""Keys that contain a secret word but hold no secret: OFFCUT_TOKEN is a token *count* (interface.md shows it)."""
MASK = "***"


def is_secret(key: object) -> bool:
    """Whether a variable named ``key`` holds a secret: its name contains KEY, TOKEN, SECRET or PASSWORD (in
    any case), unless it is one of :data:`NOT_SECRET`."""
    upper = str(key).upper()
    return upper not in NOT_SECRET and any(word in upper for word in _SECRET_WORDS)


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of an environment mapping with every secret value shown as ``***``."""
    return {k: (MASK if is_secret(k) else v) for k, v in env.items()}


_SECRET_KEYS: dict[object, bool] = {}   # is_secret by key: a status of 1000 services asks for the same 15 keys
_NESTED = (dict, list, tuple)


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` (JSON-like) where every mapping entry with a secret key shows ``***``; recurses into
    dicts and lists (a tuple becomes a list). ``None`` stays ``None`` (an unset secret is not a secret)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            secret = _SECRET_KEYS.get(k)
            if secret is None:
                secret = is_secret(k)
                if len(_SECRET_KEYS) < 4096:
                    _SECRET_KEYS[k] = secret
            out[k] = MASK if secret and v is not None else (mask_secrets(v) if isinstance(v, _NESTED) else v)
        return out
    if isinstance(value, _NESTED):
        return [mask_secrets(v) if isinstance(v, _NESTED) else v for v in value]
    return value


# --------------------------------------------------------------------------- value grammars

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_LOOSE_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")   # command lines also take "1.s", ".5s"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_EXAMPLES = "\"500ms\", \"10s\", \"5m\" or \"1h\""


def parse_duration(text: object, *, bare_seconds: bool = False) -> float:
    """``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``, or combinations such as ``"1m30s"``; returns seconds.

    ``bare_seconds`` (command-line flags) also accepts a plain non-negative number of seconds (``"2.5"``,
    ``"inf"``) and numbers such as ``"1.s"`` or ``".5s"``.
    Raises ``ValueError`` with a message that shows the accepted forms."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"a duration is a string such as {DURATION_EXAMPLES}")
    if bare_seconds:
        try:
            value = float(text.strip())
        except ValueError:
            pass
        else:
            if not value >= 0:   # negative or NaN; "inf" means for ever
                raise ValueError(f"{text!r}: a duration cannot be negative")
            return value
    source = text.strip() if bare_seconds else text
    pos, total = 0, 0.0
    for m in (_LOOSE_DURATION_PART if bare_seconds else _DURATION_PART).finditer(source):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(source) or not source:
        raise ValueError(f"{text!r} is not a duration such as {DURATION_EXAMPLES}")
    return total


def parse_hostport(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:80"`` for IPv6) to ``(host, port)``; ``ValueError`` if it is not one."""
    host, _, port = text.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


# --------------------------------------------------------------------------- the status shape

if TYPE_CHECKING:
    class ServiceStatus(TypedDict):
        name: str
        state: str
        pid: int | None
        restarts: int
        uptime_s: float | None
        ready_after_s: float | None
        exit_code: int | None
        last_error: str | None
        gpu: str | None
        state_since: float | None      # Unix time of the last state change
        ready_timeout_s: float | None  # the unit's [ready] timeout (a starting service's progress)
        counters: dict[str, Any]       # log_bytes, log_dropped_bytes, rule_matches, live_failures, last_exit_code
        waiting_on: str | None         # while it starts: what it waits on (probes' words, dependencies)
        notify: str | None             # what the service said by sd_notify (STATUS=, STOPPING=1, RELOADING=1)
        external: bool                 # it runs elsewhere (external = true, or outside up --only): probed only

    class StackStatus(TypedDict):
        state: str
        pid: int
        uptime_s: float
        name: str
        time: float                    # the daemon's Unix time when it answered

    class StatusPayload(TypedDict):
        stack: StackStatus
        services: list[ServiceStatus]


def service_status(*, name: str, state: str, pid: int | None = None, restarts: int = 0,
                   uptime_s: float | None = None, ready_after_s: float | None = None,
                   exit_code: int | None = None, last_error: str | None = None,
                   gpu: str | None = None, state_since: float | None = None,
                   ready_timeout_s: float | None = None, counters: Mapping[str, Any] | None = None,
                   waiting_on: str | None = None, notify: str | None = None,
                   external: bool = False) -> ServiceStatus:
    """One service's row of ``status --json`` (interface.md), keys in their documented order."""
    return {"name": name, "state": str(state), "pid": pid, "restarts": restarts,
            "uptime_s": None if uptime_s is None else round(uptime_s, 3),
            "ready_after_s": None if ready_after_s is None else round(ready_after_s, 3),
            "exit_code": exit_code, "last_error": last_error, "gpu": gpu, "state_since": state_since,
            "ready_timeout_s": ready_timeout_s,
            "counters": dict(counters) if counters is not None else {
                "log_bytes": 0, "log_dropped_bytes": 0, "rule_matches": {}, "live_failures": 0,
                "last_exit_code": None},
            "waiting_on": waiting_on, "notify": notify, "external": external}


_ROW_KEYS = frozenset(("name", "state", "pid", "restarts", "uptime_s", "ready_after_s", "exit_code", "last_error",
                       "gpu", "state_since", "ready_timeout_s", "counters", "waiting_on", "notify", "external"))
_COUNTER_KEYS = frozenset(("log_bytes", "log_dropped_bytes", "rule_matches", "live_failures", "last_exit_code"))


def mask_status(payload: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`mask_secrets` of a status payload, without walking the rows :func:`service_status` built: their
    keys are the fixed ones above, none a secret's (``rule_matches`` counts by rule name). A row with any other
    key, and everything else in the payload, is masked as usual. A 1000-service status costs a third less."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key == "services" and isinstance(value, list):
            out[key] = [row if isinstance(row, dict) and row.keys() <= _ROW_KEYS
                        and (not isinstance(row.get("counters"), dict) or row["counters"].keys() <= _COUNTER_KEYS)
                        else mask_secrets(row) for row in value]
        else:
            out[key] = mask_secrets({key: value})[key]
    return out


def stack_status(*, state: str, pid: int, uptime_s: float, name: str, now: float | None = None) -> StackStatus:
    """The ``stack`` object of ``status --json``; ``time`` is ``now`` (default: now, as Unix time), against
    which a client reads the services' ``state_since`` whatever its own clock says."""
    if now is None:
        import time  # (cheap, and only the daemon builds a status)

        now = time.time()
    return {"state": str(state), "pid": pid, "uptime_s": round(uptime_s, 3), "name": name, "time": round(now, 3)}
