"""``${NAME}`` expansion and the resolved form of a unit: what the engine needs to start it.

Expansion never splits or joins argv elements and no shell is involved. ``${NAME:-default}`` gives a default,
``$$`` is a literal ``$``; a bare ``$NAME`` is left alone (for units that run ``/bin/sh -c``).
An unknown name is an error (at ``check`` time and at each start), never an empty string.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from supervisor.config import dotenv
from supervisor.config.patterns import PatternError, compile_line_pattern
from supervisor.config.safefile import MAX_FILE_BYTES, FileRefused
from supervisor.config.spec import HttpCheck, LiveSpec, LogRule, ReadySpec, StackSpec, UnitSpec
from supervisor.errors import Problems
from supervisor.protocol import parse_hostport
from supervisor.records import dataclass

_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


class UnknownVariable(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def expand(text: str, lookup: Mapping[str, str]) -> str:
    """Expand ``${NAME}`` / ``${NAME:-default}`` / ``$$``; raises UnknownVariable."""
    if "$" not in text:
        return text

    def sub(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        name, default = m.group(2), m.group(3)
        v = lookup.get(name)
        if v is None or (v == "" and default is not None):
            if default is not None:
                return default
            raise UnknownVariable(name)
        return v

    return _VAR.sub(sub, text)


@dataclass(frozen=True)
class ReadyChecks:
    log: str | None
    http: HttpCheck | None
    tcp: tuple[str, int] | None
    exec: tuple[str, ...] | None
    mode: str
    timeout: float
    interval: float
    notify: bool = False            # [ready] notify: READY=1 on the service's NOTIFY_SOCKET


@dataclass(frozen=True)
class LiveChecks(ReadyChecks):
    """``[live]``: the checks of :class:`ReadyChecks` (``timeout`` is one round's), run every ``interval`` once
    the service is ready; ``failures`` failed rounds in a row trigger ``action``."""

    failures: int = 3
    action: str = "restart"
    watchdog: float | None = None   # [live] watchdog: WATCHDOG=1 at least this often


class UnitEnv(Mapping[str, str]):
    """A unit's process environment without a copy of the daemon's: ``base`` (the environment qasup inherited,
    one dict shared by every unit of a plan) under ``own`` (the unit's env files, ``env``, GPU variables and
    ``QASUP_SERVICE``). The same mapping as ``{**base, **own}``, in the same order (``base``'s keys where they
    are, then ``own``'s new ones), so a spawn gets the same environment, variable for variable and in order.
    Read-only; equal to any mapping with the same items."""

    __slots__ = ("base", "own")

    def __init__(self, base: Mapping[str, str], own: Mapping[str, str]) -> None:
        self.base = base
        self.own = own

    def __getitem__(self, key: str) -> str:
        own = self.own
        return own[key] if key in own else self.base[key]

    def __contains__(self, key: object) -> bool:
        return key in self.own or key in self.base

    def __iter__(self) -> Iterator[str]:
        base = self.base
        yield from base
        for k in self.own:
            if k not in base:
                yield k

    def __len__(self) -> int:
        base = self.base
        return len(base) + sum(1 for k in self.own if k not in base)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, UnitEnv) and other.base is self.base and other.own == self.own:
            return True
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None   # type: ignore[assignment]  # a mapping: unhashable, as a dict

    def __repr__(self) -> str:
        return f"UnitEnv({dict(self.items())!r})"


@dataclass(frozen=True)
class ResolvedUnit:
    """A unit with every ``${NAME}`` expanded and every path made absolute, ready to start."""

    spec: UnitSpec
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]                # the full process environment (a UnitEnv, or a plain mapping)
    log_file: Path
    tail: tuple[Path, ...]
    requires_paths: tuple[Path, ...]
    prepare_argv: tuple[str, ...] | None
    prepare_paths: tuple[Path, ...]
    ready: ReadyChecks
    rules: tuple[LogRule, ...]            # messages expanded
    cuda_visible_devices: str | None = None
    live: LiveChecks | None = None        # [live], expanded
    external: bool = False                # runs elsewhere (`external = true`, or outside `up --only`): probes only
    pid_file: Path | None = None          # type = "forking": pid_file expanded, relative to cwd

    @property
    def name(self) -> str:
        return self.spec.name


_ENVIRON = ("environ",)   # env_cache's key for the plan's snapshot of the environment (no path is a tuple)


def sharing(environ: dict[str, str]) -> dict[Any, Any]:
    """An ``env_cache`` for one :func:`resolve_unit` call whose unit takes ``environ`` itself as its base (no
    copy): for a caller that resolves again and again from one snapshot that it never changes (the engine)."""
    return {_ENVIRON: (environ, environ)}


def builtins(stack: StackSpec, name: str) -> dict[str, str]:
    return {"QASUP_STACK_DIR": str(stack.root), "QASUP_PYTHON": sys.executable, "QASUP_SERVICE": name}


def resolve_unit(stack: StackSpec, unit: UnitSpec, plan_env: Mapping[str, str], gpu_env: Mapping[str, str],
                 probs: Problems, environ: Mapping[str, str] | None = None,
                 pending_env_file: Mapping[str, str] | None = None,
                 env_cache: dict[Any, Any] | None = None) -> ResolvedUnit | None:
    """Expand one unit. Problems go to ``probs`` as ``FILE: KEY: message``; returns None when there are any.

    ``pending_env_file``: the plan results that will be written to the stack's env file before the start
    (``check`` and ``plan`` do not write it, yet the unit must resolve as it will at ``up``).
    """
    n0 = len(probs.items)
    r = resolve_unit_anyway(stack, unit, plan_env, gpu_env, probs, environ, pending_env_file, env_cache)
    return None if len(probs.items) > n0 else r


def resolve_unit_anyway(stack: StackSpec, unit: UnitSpec, plan_env: Mapping[str, str], gpu_env: Mapping[str, str],
                        probs: Problems, environ: Mapping[str, str] | None = None,
                        pending_env_file: Mapping[str, str] | None = None,
                        env_cache: dict[Any, Any] | None = None) -> ResolvedUnit:
    """:func:`resolve_unit`, returning the unit even when it has problems (a value that could not be expanded
    is left as written): for checks across units that must run alongside those problems (log files)."""
    # One snapshot of the environment per call: os.environ decodes on every access (a stack of a
    # thousand units resolves a thousand times); merging plain dicts is cheap. With ``env_cache`` (one plan),
    # one snapshot for all its units: each unit's environment is that snapshot under its own values (UnitEnv).
    source = os.environ if environ is None else environ
    snap = env_cache.get(_ENVIRON) if env_cache is not None else None
    if snap is not None and snap[0] is source:
        env0: dict[str, str] = snap[1]
    else:
        env0 = dict(source)
        if env_cache is not None:
            env_cache[_ENVIRON] = (source, env0)
    base = {**env0, **builtins(stack, unit.name)}

    def x(text: str, key: str, lookup: Mapping[str, str]) -> str:
        try:
            return expand(text, lookup)
        except UnknownVariable as e:
            probs.add(unit.file_of(key), key, f"unknown variable ${{{e.name}}}: define it in env, an env file, the "
                                      f"environment, or write ${{{e.name}:-default}}")
            return text

    with_plan = {**base, **plan_env}
    files: dict[str, str] = {}
    stack_env = os.path.normpath(stack.path(stack.env_file))
    for f in unit.env_files:
        p = stack.path(x(f, "env_files", with_plan))
        is_stack_env = os.path.normpath(p) == stack_env
        try:
            if env_cache is None:
                files.update(dotenv.load(p))
            else:   # one plan reads each env file once, however many units list it
                if p not in env_cache:
                    try:
                        env_cache[p] = dotenv.load(p)
                    except (OSError, ValueError) as e:
                        env_cache[p] = e
                got = env_cache[p]
                if isinstance(got, BaseException):
                    raise got
                files.update(got)
        except FileNotFoundError:
            if not is_stack_env:
                probs.add(unit.file_of("env_files"), "env_files", f"{p}: no such file")
        except FileRefused as e:   # a FIFO, a device, a directory, a file over 1 MiB: never waited on
            probs.add(unit.file_of("env_files"), "env_files", f"env file {p} {e}: list only regular files of "
                      f"at most {MAX_FILE_BYTES >> 20} MiB in env_files")
        except OSError as e:
            probs.add(unit.file_of("env_files"), "env_files", f"{p}: {e.strerror or e}")
        except ValueError as e:
            probs.add(unit.file_of("env_files"), "env_files", f"{p}: {e}")
        if is_stack_env and pending_env_file:
            files.update(pending_env_file)
    env_ctx = {**base, **files, **plan_env}
    unit_env = {k: x(v, f"env.{k}", env_ctx) for k, v in unit.env.items()}
    lookup = {**base, **files, **unit_env, **plan_env, **gpu_env}

    argv = tuple(x(a, "command", lookup) for a in unit.command)
    cwd = stack.path(x(unit.cwd, "cwd", lookup)) if unit.cwd else stack.root
    # An external unit's log file is the would-be default path: nothing writes it (no process runs here).
    log_file = (stack.path(x(unit.log.file, "log.file", lookup)) if unit.log.file and not unit.external
                else stack.path(stack.log_dir) / f"{unit.name}.log")
    tail = tuple(stack.path(x(t, "log.tail", lookup)) for t in unit.log.tail)
    pid_file = cwd / x(unit.pid_file, "pid_file", lookup) if unit.pid_file else None
    req_paths = tuple(stack.path(x(p, "requires_paths", lookup)) for p in unit.requires_paths)
    prep_argv = prep_paths = None
    if unit.prepare:
        prep_argv = tuple(x(a, "prepare.command", lookup) for a in unit.prepare.command)
        prep_paths = tuple(stack.path(x(p, "prepare.when_changed", lookup)) for p in unit.prepare.when_changed)
    ready = _checks(unit, "ready", unit.ready, lookup, x, probs)
    live = None
    if unit.live is not None:
        lc = _checks(unit, "live", unit.live, lookup, x, probs)
        lv = unit.live
        live = LiveChecks(log=lc.log, http=lc.http, tcp=lc.tcp, exec=lc.exec, mode=lc.mode, timeout=lv.timeout,
                          interval=lv.interval, failures=lv.failures, action=lv.action, watchdog=lv.watchdog)
    rules = []
    for i, rule in enumerate(unit.on_log, 1):
        msg = rule.message
        if msg:
            msg = x(msg, f"on_log[{i}].message", lookup)
        rules.append(LogRule(rule.match, rule.action, rule.count, rule.within, rule.context, msg))

    if unit.external:   # runs elsewhere: its probes only (its spec has no command, log, prepare, GPU or paths)
        gpu_env = {}
    proc_env = UnitEnv(env0, {**files, **unit_env, **gpu_env, "QASUP_SERVICE": unit.name})
    return ResolvedUnit(
        spec=unit, argv=argv, cwd=cwd, env=proc_env, log_file=log_file, tail=tail, requires_paths=req_paths,
        prepare_argv=prep_argv, prepare_paths=prep_paths or (), ready=ready, rules=tuple(rules),
        cuda_visible_devices=gpu_env.get("CUDA_VISIBLE_DEVICES"), live=live, external=unit.external,
        pid_file=pid_file)


def _checks(unit: UnitSpec, table: str, r: ReadySpec | LiveSpec, lookup: Mapping[str, str],
            x: Callable[[str, str, Mapping[str, str]], str], probs: Problems) -> ReadyChecks:
    """``[ready]`` or ``[live]`` with its ``${NAME}`` expanded (``timeout``/``interval`` as written)."""
    http = None
    if r.http:
        url = x(r.http.url, f"{table}.http.url", lookup)
        n_before = len(probs.items)
        expect = x(r.http.expect, f"{table}.http.expect", lookup) if r.http.expect else None
        if expect is not None and len(probs.items) == n_before:
            try:   # expanded: the pattern the probe searches bodies for, with the log patterns' linear-time rules
                compile_line_pattern(expect)
            except (PatternError, OverflowError, RecursionError) as e:
                probs.add(unit.file_of(f"{table}.http.expect"), f"{table}.http.expect", str(e))
        http = HttpCheck(url, r.http.method, expect)
    tcp = None
    if r.tcp:
        n_before = len(probs.items)
        hp = x(r.tcp, f"{table}.tcp", lookup)
        if len(probs.items) == n_before:   # else the unknown ${NAME} is the problem, not the unexpanded text
            try:
                tcp = parse_hostport(hp)
            except ValueError as e:
                probs.add(unit.file_of(f"{table}.tcp"), f"{table}.tcp", str(e))
    return ReadyChecks(
        log=r.log, http=http, tcp=tcp,
        exec=tuple(x(a, f"{table}.exec", lookup) for a in r.exec) if r.exec else None,
        mode=r.mode, timeout=r.timeout, interval=r.interval, notify=isinstance(r, ReadySpec) and r.notify)


def describe_checks(checks: ReadyChecks) -> str:
    """A probe in words, as ``plan`` and ``status`` show what an external unit is waited on by:
    ``http POST http://10.0.0.5:7800/list_models``, ``tcp 10.0.0.7:8776``, ``exec curl -sf URL``; several
    joined by ``and`` (mode all) or ``or`` (mode any)."""
    parts: list[str] = []
    if checks.http is not None:
        h = checks.http
        method = "" if h.method == "GET" else f"{h.method} "
        parts.append(f"http {method}{h.url}" + (f" (body matching {h.expect!r})" if h.expect else ""))
    if checks.tcp is not None:
        host, port = checks.tcp
        parts.append(f"tcp [{host}]:{port}" if ":" in host else f"tcp {host}:{port}")
    if checks.exec is not None:
        parts.append(f"exec {shlex.join(checks.exec)}")
    if checks.log is not None:
        parts.append(f"log {checks.log!r}")
    if checks.notify:
        parts.append("sd_notify READY=1")
    return (" or " if checks.mode == "any" else " and ").join(parts) or "no check"


def expand_banner(stack: StackSpec, plan_env: Mapping[str, str], probs: Problems,
                  environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    lookup = {**environ, **builtins(stack, ""), **plan_env}
    try:
        return expand(stack.banner, lookup)
    except UnknownVariable as e:
        probs.add(stack.file or stack.root, "stack.banner", f"unknown variable ${{{e.name}}}")
        return stack.banner
