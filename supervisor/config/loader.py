"""Load ``qasup.toml`` and ``services.d/*.toml`` (with drop-ins) into validated, immutable specs.

Strict: unknown keys, wrong types, bad durations, sizes, regexes, signals and names are all reported, every
problem of a run at once, as ``FILE: KEY: message``. Whatever the input, the only exception that leaves
:func:`load_config` is :class:`~supervisor.errors.ConfigError`.
Cross-unit checks that depend on the plan (unknown dependencies, cycles, ``${NAME}``) live in
:mod:`supervisor.plan.resolve` and :mod:`supervisor.plan.graph`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from supervisor.config import spec as S
from supervisor.errors import ConfigError, Problems
from supervisor.config.spec import file_of
from supervisor.config.values import NAME_RE, parse_duration, parse_signal, parse_size

STACK_FILE = "qasup.toml"

# `when` keys and the type/values each accepts (facts the plan produces).
WHEN_KEYS: dict[str, tuple[type, tuple[object, ...] | None]] = {
    "llm_api": (str, ("local", "cloud")),
    "runtime_backend": (str, ("default", "hf", "vllm", "sglang")),
    "requested_backend": (str, ("default", "hf", "vllm", "sglang")),
    "model_size": (str, None),
    "same_gpu": (bool, None),
    "ocr_use_gpu": (bool, None),
    "tensor_parallel": (int, (1, 2, 4, 8, 16)),
}

PLAN_KEYS: dict[str, type | tuple[type, ...]] = {
    "llm_api": str, "device_id": str, "runtime_backend": str, "model_name": str, "model_size": str,
    "conv_template": str, "tensor_parallel": int, "gpu_memory_utilization": (float, int), "gpus": (str, list),
}

_MISSING = object()


class _Reader:
    """Typed access to one TOML table, reporting problems under a dotted key prefix."""

    def __init__(self, probs: Problems, file: Path, data: dict[str, Any], prefix: str, allowed: set[str],
                 origins: Mapping[str, Path] | None = None):
        self.probs, self.file, self.data, self.prefix = probs, file, data, prefix
        self.origins = origins or {}
        for key in data:
            if key not in allowed:
                hint = _closest(key, allowed)
                self.err(key, "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))

    def key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def err(self, key: str, message: str) -> None:
        full = self.key(key)
        self.probs.add(file_of(self.origins, full, self.file), full, message)

    def raw(self, key: str) -> Any:
        return self.data.get(key, _MISSING)

    def typed(self, key: str, kind: type | tuple[type, ...], what: str, default: Any) -> Any:
        v = self.data.get(key, _MISSING)
        if v is _MISSING:
            return default
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.err(key, f"expected {what}, got a boolean")
            return default
        if not isinstance(v, kind):
            self.err(key, f"expected {what}, got {_typename(v)}")
            return default
        return v

    def str(self, key: str, default: Any = None) -> Any:
        return self.typed(key, str, "a string", default)

    def bool(self, key: str, default: bool) -> bool:
        return self.typed(key, bool, "true or false", default)

    def int(self, key: str, default: Any, minimum: int = 0) -> Any:
        v = self.typed(key, int, "an integer", default)
        if v is not default and v < minimum:
            self.err(key, f"must be at least {minimum}")
            return default
        return v

    def converted(self, key: str, convert: Callable[[Any], Any], default: Any) -> Any:
        v = self.data.get(key, _MISSING)
        if v is _MISSING:
            return default
        try:
            return convert(v)
        except (ValueError, TypeError, OverflowError) as e:
            self.err(key, str(e))
            return default

    def duration(self, key: str, default: float) -> float:
        return self.converted(key, parse_duration, default)

    def size(self, key: str, default: int) -> int:
        return self.converted(key, parse_size, default)

    def enum(self, key: str, choices: tuple[str, ...], default: Any) -> Any:
        v = self.str(key, default)
        if v is not default and v not in choices:
            self.err(key, f"{v!r} is not one of {', '.join(choices)}")
            return default
        return v

    def str_list(self, key: str, *, nonempty: bool = False) -> tuple[str, ...] | None:
        v = self.data.get(key, _MISSING)
        if v is _MISSING:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.err(key, f"expected a list of strings, got {_typename(v)}")
            return None
        if nonempty and not v:
            self.err(key, "must not be empty")
            return None
        return tuple(v)

    def names(self, key: str) -> tuple[str, ...]:
        v = self.str_list(key) or ()
        for n in v:
            if not NAME_RE.match(n):
                self.err(key, f"{n!r} is not a valid service name (lowercase letters, digits, '_', '.', '-')")
        if len(set(v)) != len(v):
            self.err(key, "lists a name twice")
        return tuple(n for n in dict.fromkeys(v) if NAME_RE.match(n))  # reported once: later checks skip them

    def regex(self, key: str, default: Any = None) -> Any:
        v = self.str(key, default)
        if v is default or v is None:
            return v
        try:
            re.compile(v)
        except (re.error, OverflowError, RecursionError) as e:
            self.err(key, f"bad regular expression {v!r}: {e}")
            return default
        from supervisor.logs.core import PatternError, compile_line_pattern   # log output is matched as bytes

        try:
            compile_line_pattern(v)
        except (PatternError, OverflowError, RecursionError) as e:
            self.err(key, str(e))
            return default
        return v

    def table(self, key: str) -> dict[str, Any] | None:
        v = self.data.get(key, _MISSING)
        if v is _MISSING:
            return None
        if not isinstance(v, dict):
            self.err(key, f"expected a table, got {_typename(v)}")
            return None
        return v

    def sub(self, key: str, allowed: set[str]) -> _Reader | None:
        t = self.table(key)
        return None if t is None else _Reader(self.probs, self.file, t, f"{self.key(key)}.", allowed,
                                                   self.origins)

    def str_map(self, key: str) -> dict[str, str]:
        t = self.table(key)
        if t is None:
            return {}
        out = {}
        for k, v in t.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                self.err(f"{key}.{k}", "not a valid environment variable name")
            elif isinstance(v, bool) or not isinstance(v, (str, int, float)):
                self.err(f"{key}.{k}", f"expected a string, got {_typename(v)}")
            else:
                out[k] = v if isinstance(v, str) else str(v)
        return out


def _typename(v: Any) -> str:
    return {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    return m[0] if m else None


# ---------------------------------------------------------------------------------------------- files


def read_toml(path: Path, probs: Problems) -> dict[str, Any] | None:
    """Parse one TOML file; syntax errors keep tomllib's line and column."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        probs.add(path, "-", f"cannot read: {e.strerror or e}")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        probs.add(path, "-", f"not UTF-8 text (byte {e.start})")
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        probs.add(path, "-", f"TOML syntax error: {e}")
    except (ValueError, RecursionError, OverflowError) as e:  # deep nesting, huge numbers
        probs.add(path, "-", f"TOML syntax error: {e}")
    return None


def record_origins(origins: dict[str, Path], base: dict[str, Any], over: dict[str, Any], file: Path,
                   prefix: str = "") -> None:
    """Note in ``origins`` which keys ``file`` (a drop-in merged over ``base``) writes, as :func:`merge` does:
    a table merged into a table keeps its own origin, anything else now belongs to ``file``."""
    for k, v in over.items():
        key = f"{prefix}{k}"
        old = base.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            record_origins(origins, old, v, file, f"{key}.")
            continue
        for stale in [o for o in origins if o.startswith((f"{key}.", f"{key}["))]:
            del origins[stale]
        origins[key] = file


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Drop-in merge: tables merge key by key (recursively); scalars and arrays are replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def find_stack(config: Path | None, cwd: Path) -> tuple[Path, Path | None]:
    """The stack folder and stack file: ``--config FILE``, else ``./qasup.toml``, else ``./services.d``."""
    if config is not None:
        config = (cwd / config).resolve() if not config.is_absolute() else config
        if config.is_dir():
            f = config / STACK_FILE
            return config, (f if f.is_file() else None)
        return config.parent, config
    f = cwd / STACK_FILE
    if f.is_file():
        return cwd.resolve(), f.resolve()
    return cwd.resolve(), None


def load_config(config: Path | None = None, cwd: Path | None = None) -> S.Config:
    """Load and validate the whole stack. Raises ConfigError listing every problem."""
    probs = Problems()
    cfg = collect_config(config, cwd, probs)
    probs.raise_if_any()
    assert cfg is not None
    return cfg


def collect_config(config: Path | None, cwd: Path | None, probs: Problems) -> S.Config | None:
    """Load the stack, adding problems to ``probs`` instead of raising, so that later stages (the plan,
    ``${NAME}`` expansion) can report theirs in the same run. Units with problems are kept, with defaults
    in place of the bad values; None when not even the stack could be read."""
    try:
        return _load(config, Path(cwd or os.getcwd()), probs)
    except RecursionError:
        probs.add(config or STACK_FILE, "-", "nesting too deep")
        return None


def _load(config: Path | None, cwd: Path, probs: Problems) -> S.Config | None:
    root, file = find_stack(config, cwd)
    if config is not None and file is not None and not file.exists():
        probs.add(file, "-", "no such file")
        return None
    stack = _load_stack(root, file, probs)
    services_dir = stack.path(stack.services)
    if not services_dir.is_dir():
        probs.add(file or root, "stack.services", f"{services_dir} is not a folder of unit files")
        return None
    units: dict[str, S.UnitSpec] = {}
    unit_files = sorted(p for p in services_dir.glob("*.toml") if p.is_file())
    names = {p.stem for p in unit_files}
    broken: set[str] = set()
    dropin_dirs = [services_dir] + [stack.path(d) for d in stack.dropins]
    for d in dropin_dirs:
        if not d.is_dir():
            continue
        for sub in sorted(d.glob("*.d")):
            if sub.is_dir() and sub.name[:-2] not in names and any(sub.glob("*.toml")):
                probs.add(sub, "-", f"drop-in folder for unit {sub.name[:-2]!r}, which does not exist")
    for path in unit_files:
        name = path.stem
        if not NAME_RE.match(name):
            probs.add(path, "-", f"{name!r} is not a valid service name: use lowercase letters, digits, '_', '.' "
                                 "and '-' (at most 63 characters, starting with a letter or digit)")
            continue
        data = read_toml(path, probs)
        if data is None:
            broken.add(name)
            continue
        sources = [path]
        origins: dict[str, Path] = {}
        for d in dropin_dirs:
            for dp in sorted((d / f"{name}.d").glob("*.toml")) if (d / f"{name}.d").is_dir() else ():
                over = read_toml(dp, probs)
                if over is not None:
                    record_origins(origins, data, over, dp)
                    data = merge(data, over)
                    sources.append(dp)
        unit = _load_unit(name, path, data, probs, tuple(sources), origins)
        if unit is not None:
            units[name] = unit
    if not unit_files:
        probs.add(services_dir, "-", "no unit files (*.toml) here")
    _check_static(units, probs, broken)
    return S.Config(stack=stack, units=MappingProxyType(units))


# ---------------------------------------------------------------------------------------------- stack


def _load_stack(root: Path, file: Path | None, probs: Problems) -> S.StackSpec:
    if file is None:
        return S.StackSpec(root=root)
    data = read_toml(file, probs)
    if data is None:
        return S.StackSpec(root=root, file=file)
    top = _Reader(probs, file, data, "", {"stack", "plan"})
    st = top.sub("stack", {"name", "services", "log_dir", "state_dir", "env_file", "echo", "stop_budget",
                           "banner", "dropins"})
    kw: dict[str, Any] = {}
    if st is not None:
        kw["name"] = st.str("name", "qasup")
        for k in ("services", "log_dir", "state_dir", "env_file"):
            v = st.str(k)
            if v is not None:
                if not v:
                    st.err(k, "must not be empty")
                else:
                    kw[k] = Path(v)
        kw["echo"] = st.bool("echo", True)
        kw["stop_budget"] = st.duration("stop_budget", 30.0)
        kw["banner"] = st.str("banner", "")
        kw["dropins"] = tuple(Path(p) for p in (st.str_list("dropins") or ()))
    plan: dict[str, object] = {}
    pt = top.sub("plan", set(PLAN_KEYS))
    if pt is not None:
        for k, kind in PLAN_KEYS.items():
            v = pt.typed(k, kind, _PLAN_WHAT[k], _MISSING)
            if v is not _MISSING:
                plan[k] = v
    return S.StackSpec(root=root, file=file, plan=MappingProxyType(plan), has_plan_table=pt is not None, **kw)


_PLAN_WHAT = {
    "tensor_parallel": "an integer", "gpu_memory_utilization": "a number between 0 and 1",
    "gpus": "an inventory (\"none\", a JSON file's path, or an array of tables)",
}
for _k in PLAN_KEYS:
    _PLAN_WHAT.setdefault(_k, "a string")


# ---------------------------------------------------------------------------------------------- units

UNIT_KEYS = {
    "description", "command", "cwd", "env", "env_files", "requires", "after", "provides", "enabled", "gpu",
    "vram_mib", "requires_paths", "when", "prepare", "log", "ready", "restart", "stop", "on_log",
}


def _load_unit(name: str, path: Path, data: dict[str, Any], probs: Problems,
               sources: tuple[Path, ...], origins: Mapping[str, Path] | None = None) -> S.UnitSpec | None:
    r = _Reader(probs, path, data, "", UNIT_KEYS, origins)
    command = r.str_list("command", nonempty=True)
    if "command" not in data:
        r.err("command", "missing: every unit needs a command (an array of strings)")
    kw: dict[str, Any] = dict(
        description=r.str("description", ""),
        cwd=r.str("cwd"),
        env=MappingProxyType(r.str_map("env")),
        env_files=r.str_list("env_files") or (),
        requires=r.names("requires"),
        after=r.names("after"),
        provides=r.names("provides"),
        enabled=r.bool("enabled", True),
        gpu=r.enum("gpu", S.GPU_ROLES, None),
        vram_mib=r.int("vram_mib", None, minimum=1),
        requires_paths=r.str_list("requires_paths") or (),
    )
    for key in ("requires", "after"):
        if name in kw[key]:
            r.err(key, f"{name!r} cannot depend on itself: {name} -> {name}")
    kw["when"] = _load_when(r)
    p = r.sub("prepare", {"command", "when_changed", "timeout"})
    if p is not None:
        cmd = p.str_list("command", nonempty=True)
        if "command" not in p.data:
            p.err("command", "missing: [prepare] needs a command")
        if cmd:
            kw["prepare"] = S.PrepareSpec(cmd, p.str_list("when_changed") or (), p.duration("timeout", 600.0))
    lg = r.sub("log", {"file", "max_bytes", "backups", "tail"})
    if lg is not None:
        kw["log"] = S.LogSpec(lg.str("file"), lg.size("max_bytes", S.LogSpec.max_bytes),
                              lg.int("backups", 5), lg.str_list("tail") or ())
    kw["ready"] = _load_ready(r)
    rs = r.sub("restart", {"policy", "delay", "max_delay", "reset_after", "max_restarts", "window", "on_give_up"})
    if rs is not None:
        d = S.RestartSpec()
        restart = S.RestartSpec(
            rs.enum("policy", S.RESTART_POLICIES, d.policy), rs.duration("delay", d.delay),
            rs.duration("max_delay", d.max_delay), rs.duration("reset_after", d.reset_after),
            rs.int("max_restarts", d.max_restarts), rs.duration("window", d.window),
            rs.enum("on_give_up", S.GIVE_UP_ACTIONS, d.on_give_up))
        if restart.max_delay < restart.delay:
            rs.err("max_delay", f"must be at least delay ({restart.delay:g}s)")
        kw["restart"] = restart
    sp = r.sub("stop", {"signal", "timeout"})
    if sp is not None:
        kw["stop"] = S.StopSpec(sp.converted("signal", parse_signal, int(S.StopSpec.signal)),
                                sp.duration("timeout", 10.0))
    kw["on_log"] = _load_rules(r)
    return S.UnitSpec(name=name, file=path, command=command or (), sources=sources,
                      origins=MappingProxyType(dict(origins or {})), **kw)


def _load_when(r: _Reader) -> MappingProxyType:
    t = r.table("when")
    out: dict[str, tuple[object, ...]] = {}
    for k, v in (t or {}).items():
        key = f"when.{k}"
        if k not in WHEN_KEYS:
            r.err(key, f"unknown condition (known: {', '.join(WHEN_KEYS)})")
            continue
        kind, choices = WHEN_KEYS[k]
        values = v if isinstance(v, list) else [v]
        ok = True
        for x in values:
            if not isinstance(x, kind) or (kind is int and isinstance(x, bool)):
                r.err(key, f"expected {kind.__name__} values, got {_typename(x)}")
                ok = False
            elif choices is not None and x not in choices:
                r.err(key, f"{x!r} is not one of {', '.join(map(str, choices))}")
                ok = False
        if not values:
            r.err(key, "an empty list matches nothing; remove the key or list values")
            ok = False
        if ok:
            out[k] = tuple(values)
    return MappingProxyType(out)


def _load_ready(r: _Reader) -> S.ReadySpec:
    rd = r.sub("ready", {"log", "http", "tcp", "exec", "mode", "timeout", "interval"})
    if rd is None:
        return S.ReadySpec()
    http = None
    hv = rd.raw("http")
    if isinstance(hv, str):
        http = S.HttpCheck(hv)
    elif isinstance(hv, dict):
        h = rd.sub("http", {"url", "method", "expect"})
        assert h is not None
        url = h.str("url")
        if url is None:
            h.err("url", "missing: an http check needs a url")
        method = h.str("method", "GET")
        if not re.match(r"^[A-Z]+$", method or ""):
            h.err("method", f"{method!r} is not an HTTP method such as GET or POST")
        if url is not None:
            http = S.HttpCheck(url, method, h.str("expect"))
    elif hv is not _MISSING:
        rd.err("http", f"expected a URL string or a table, got {_typename(hv)}")
    if http is not None and not http.url.startswith(("http://", "https://", "${")):
        rd.err("http", f"{http.url!r} is not an http:// or https:// URL")
        http = None
    tcp = rd.str("tcp")
    if tcp is not None and "${" not in tcp and not re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$", tcp):
        rd.err("tcp", f"{tcp!r} is not HOST:PORT")
        tcp = None
    d = S.ReadySpec()
    spec = S.ReadySpec(
        log=rd.regex("log"), http=http, tcp=tcp, exec=rd.str_list("exec", nonempty=True),
        mode=rd.enum("mode", S.READY_MODES, "all"), timeout=rd.duration("timeout", d.timeout),
        interval=rd.duration("interval", d.interval))
    if spec.interval <= 0:
        rd.err("interval", "must be more than 0")
    return spec


def _load_rules(r: _Reader) -> tuple[S.LogRule, ...]:
    v = r.raw("on_log")
    if v is _MISSING:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        r.err("on_log", "expected an array of tables ([[on_log]])")
        return ()
    rules = []
    for i, t in enumerate(v, 1):
        rr = _Reader(r.probs, r.file, t, f"on_log[{i}].", {"match", "action", "count", "within", "context",
                                                          "message"}, r.origins)
        match = rr.regex("match")
        if "match" not in t:
            rr.err("match", "missing: a rule needs a regex to match")
        rule = S.LogRule(match or "", rr.enum("action", S.RULE_ACTIONS, "warn"), rr.int("count", 1, minimum=1),
                         rr.duration("within", 60.0), rr.int("context", 5), rr.str("message"))
        if match:
            rules.append(rule)
    return tuple(rules)


def _check_static(units: dict[str, S.UnitSpec], probs: Problems, broken: set[str]) -> None:
    """Checks across units that hold in every plan: dependencies on names nothing defines."""
    known = set(units) | broken
    for u in units.values():
        known.update(u.provides)
    for u in units.values():
        for key in ("requires", "after"):
            for dep in getattr(u, key):
                if dep not in known:
                    hint = _closest(dep, known)
                    probs.add(u.file_of(key), key, f"unknown service {dep!r}: no unit is named so or provides it"
                              + (f" (did you mean {hint!r}?)" if hint else ""))
    for name, u in list(units.items()):
        clash = [p for p in u.provides if p in units and p != u.name]
        for p in clash:
            probs.add(u.file_of("provides"), "provides", f"{p!r} is the name of another unit")
        if clash:  # reported once here; keep the plan from reporting it again as two providers
            units[name] = dataclasses.replace(u, provides=tuple(p for p in u.provides if p not in clash))
