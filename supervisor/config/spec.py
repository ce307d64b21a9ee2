"""Typed, immutable specs: what a validated ``qasup.toml`` and ``services.d/*.toml`` say.

Values are kept as written (``${NAME}`` unexpanded); :mod:`supervisor.plan.resolve` expands them against the plan.
Defaults here are the documented defaults of interface.md, and the only place they are written: the loaders
read them from these classes.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from supervisor.protocol import DEFAULT_STATE_DIR
from supervisor.records import dataclass


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


_KEY_SPLIT = re.compile(r"[.\[]")


def file_of(origins: Mapping[str, Path], key: str, default: Path) -> Path:
    """The file that wrote ``key`` (a dotted path such as ``restart.delay`` or ``on_log[2].match``): the
    nearest enclosing key recorded in ``origins`` (see :func:`supervisor.config.files.record_origins`), else ``default``."""
    while key:
        f = origins.get(key)
        if f is not None:
            return f
        cut = max((m.start() for m in _KEY_SPLIT.finditer(key)), default=0)
        key = key[:cut]
    return default


RESTART_POLICIES = ("always", "on-failure", "never")
GIVE_UP_ACTIONS = ("fail", "abort")
RULE_ACTIONS = ("abort", "restart", "fail", "warn")
GPU_ROLES = ("llm", "embed", "all")
READY_MODES = ("all", "any")
UNIT_TYPES = ("simple", "forking")   # forking: the launcher exits once its daemon runs (systemd Type=forking)
STOP_MODES = ("group", "main")       # group: every process at once; main: the main process, then the rest
LIVE_ACTIONS = ("restart", "fail", "warn")


@dataclass(frozen=True)
class HttpCheck:
    url: str
    method: str = "GET"
    expect: str | None = None


@dataclass(frozen=True)
class ReadySpec:
    log: str | None = None
    http: HttpCheck | None = None
    tcp: str | None = None
    exec: tuple[str, ...] | None = None
    mode: str = "all"
    timeout: float = 120.0
    interval: float = 1.0
    notify: bool = False           # sd_notify: READY=1 on the service's NOTIFY_SOCKET is one more check

    @property
    def has_checks(self) -> bool:
        return self.notify or any(x is not None for x in (self.log, self.http, self.tcp, self.exec))


@dataclass(frozen=True)
class LiveSpec:
    """``[live]``: checks that keep running once the service is ready; ``failures`` failed rounds in a row
    trigger ``action``. A ``log`` check passes when a matching line arrived since the previous round."""

    log: str | None = None
    http: HttpCheck | None = None
    tcp: str | None = None
    exec: tuple[str, ...] | None = None
    mode: str = "all"
    interval: float = 10.0
    timeout: float = 5.0           # one round of checks
    failures: int = 3
    action: str = "restart"
    watchdog: float | None = None  # sd_notify: WATCHDOG=1 must come at least this often (a failed round if not)

    @property
    def has_checks(self) -> bool:
        return self.watchdog is not None or any(x is not None for x in (self.log, self.http, self.tcp, self.exec))


@dataclass(frozen=True)
class PrepareSpec:
    command: tuple[str, ...]
    when_changed: tuple[str, ...] = ()
    timeout: float = 600.0


@dataclass(frozen=True)
class LogSpec:
    file: str | None = None          # None: <log_dir>/<name>.log
    max_bytes: int = 50 * 1024 * 1024
    backups: int = 5
    tail: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestartSpec:
    policy: str = "on-failure"
    delay: float = 1.0
    max_delay: float = 60.0
    reset_after: float = 600.0
    max_restarts: int = 5
    window: float = 600.0
    on_give_up: str = "fail"


@dataclass(frozen=True)
class StopSpec:
    signal: int = int(signal.SIGTERM)
    timeout: float = 10.0
    mode: str = "group"


@dataclass(frozen=True)
class LogRule:
    match: str
    action: str = "warn"
    count: int = 1
    within: float = 60.0
    context: int = 5
    message: str | None = None


@dataclass(frozen=True)
class DropinPart:
    """One drop-in file of a unit, as read: ``when`` is its own condition (a conditional drop-in applies only in
    plans whose facts match it; None: it always applies), ``data`` the rest of its keys, as written."""

    file: Path
    when: Any
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Conditional:
    """A unit's conditional drop-ins, kept so that the plan can merge the unit again with those that match:
    the unit file's own data, every drop-in in order (conditional or not), and each conditional one's
    validated condition (by file)."""

    base: Mapping[str, Any]
    parts: tuple[DropinPart, ...]
    when: Mapping[Path, Mapping[str, tuple[object, ...]]]


@dataclass(frozen=True)
class UnitSpec:
    name: str
    file: Path
    command: tuple[str, ...]
    description: str = ""
    external: bool = False           # runs elsewhere: no command, known only through its [ready]/[live] probes
    type: str = "simple"
    pid_file: str | None = None      # forking: where the daemon writes its pid (else: the one process left)
    user: str | None = None          # name or number; the child switches to it before exec
    group: str | None = None         # default: the user's primary group
    groups: tuple[str, ...] = ()     # supplementary groups (default with a user: the user's groups)
    restart_with: tuple[str, ...] = ()   # restart this service whenever one of these restarts (PartOf=)
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=_empty)
    env_files: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    enabled: bool = True
    gpu: str | None = None
    vram_mib: int | None = None
    requires_paths: tuple[str, ...] = ()
    when: Mapping[str, tuple[object, ...]] = field(default_factory=_empty)
    prepare: PrepareSpec | None = None
    log: LogSpec = field(default_factory=LogSpec)
    ready: ReadySpec = field(default_factory=ReadySpec)
    live: LiveSpec | None = None
    restart: RestartSpec = field(default_factory=RestartSpec)
    stop: StopSpec = field(default_factory=StopSpec)
    on_log: tuple[LogRule, ...] = ()
    sources: tuple[Path, ...] = ()   # the unit file and its drop-ins, in the order applied
    origins: Mapping[str, Path] = field(default_factory=_empty, compare=False)  # key -> drop-in that set it
    conditional: Conditional | None = field(default=None, compare=False)   # drop-ins with their own [when]

    def file_of(self, key: str) -> Path:
        """The file that wrote ``key`` (``requires``, ``ready.http.url``, ``on_log[1].message``): the drop-in
        that set it last, else the unit file. Use it to report a problem where the user must fix it."""
        return file_of(self.origins, key, self.file) if self.origins else self.file


@dataclass(frozen=True)
class StackSpec:
    root: Path                        # the stack folder: relative paths resolve against it
    file: Path | None = None          # qasup.toml, when there is one
    name: str = "qasup"
    services: Path = Path("services.d")
    dropins: tuple[Path, ...] = ()
    log_dir: Path = Path("logs")
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    env_file: Path = Path(".env")
    echo: bool = True
    stop_budget: float = 30.0
    banner: str = ""
    http: tuple[str, int] | None = None   # the read-only listener (status page, /metrics); `up --http` wins
    plan: Mapping[str, object] = field(default_factory=_empty)   # the [plan] table as written (validated keys)
    has_plan_table: bool = False

    def path(self, p: str | Path) -> Path:
        """A path from the stack file or a unit, made absolute against the stack folder."""
        p = Path(p)
        return p if p.is_absolute() else self.root / p


@dataclass(frozen=True)
class Config:
    """A validated stack: the stack file and every unit, by name."""

    stack: StackSpec
    units: Mapping[str, UnitSpec]
