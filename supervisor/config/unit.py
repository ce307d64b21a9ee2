"""One unit file (with its drop-ins merged) read into a :class:`~supervisor.config.spec.UnitSpec`.

Every table of a unit has its reader here: the top-level keys, ``[when]`` (against
:data:`supervisor.config.facts.WHEN_FACTS`), ``[prepare]``, ``[log]``, ``[ready]``, ``[restart]``, ``[stop]``
and ``[[on_log]]``. A default is the spec dataclass's own default, never a literal retyped here.
Problems go to the collector; the unit is still returned, with defaults in place of the bad values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from supervisor.config import spec as S
from supervisor.config.facts import WHEN_FACTS
from supervisor.config.reader import MISSING, Reader, typename
from supervisor.config.values import parse_signal
from supervisor.errors import Problems
from supervisor.protocol import parse_duration

__all__ = ["UNIT_KEYS", "load_unit", "load_when"]

UNIT_KEYS = {
    "description", "command", "cwd", "env", "env_files", "requires", "after", "provides", "enabled", "gpu",
    "vram_mib", "requires_paths", "when", "prepare", "log", "ready", "restart", "stop", "on_log",
    "type", "pid_file", "user", "group", "groups", "restart_with", "live", "external",
}
EXTERNAL_NOT_ALLOWED = ("command", "prepare", "stop", "restart", "on_log", "log", "user", "group", "groups", "type",
                        "pid_file", "gpu", "vram_mib", "requires_paths", "restart_with")
"""Keys that only make sense for a process qasup runs: an ``external = true`` unit has none of them."""
_ACCOUNT = re.compile(r"^([a-z_][a-z0-9_.-]{0,31}\$?|[0-9]{1,10})$")   # a user or group name, or a number

_HTTP_METHOD = re.compile(r"^[A-Z]+$")
_TCP_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$")   # a literal HOST:PORT's shape


def load_unit(name: str, path: Path, data: dict[str, Any], probs: Problems,
              sources: tuple[Path, ...], origins: Mapping[str, Path] | None = None) -> S.UnitSpec:
    """The unit ``name`` from ``data`` (``path`` with ``sources`` merged; ``origins``: which drop-in wrote
    which key)."""
    U = S.UnitSpec
    r = Reader(probs, path, data, "", UNIT_KEYS, origins)
    external = r.boolean("external", U.external)
    command = r.str_list("command", nonempty=True)
    if "command" not in data and not external:
        r.err("command", "missing: every unit needs a command (an array of strings), unless it is "
                         "external = true (a service that runs elsewhere, known by its [ready] probes)")
    kw: dict[str, Any] = dict(
        description=r.string("description", U.description), external=external,
        cwd=r.string("cwd", U.cwd),
        env=MappingProxyType(r.str_map("env")),
        env_files=r.str_list("env_files") or U.env_files,
        requires=r.names("requires"),
        after=r.names("after"),
        provides=r.names("provides"),
        enabled=r.boolean("enabled", U.enabled),
        gpu=r.enum("gpu", S.GPU_ROLES, U.gpu),
        vram_mib=r.integer("vram_mib", U.vram_mib, minimum=1),
        requires_paths=r.str_list("requires_paths") or U.requires_paths,
        type=r.enum("type", S.UNIT_TYPES, U.type),
        pid_file=r.string("pid_file", U.pid_file),
        user=_account(r, "user"),
        group=_account(r, "group"),
        groups=tuple(g for g in (r.str_list("groups") or ()) if _account_ok(r, "groups", g)),
        restart_with=r.names("restart_with"),
    )
    if kw["pid_file"] is not None and kw["type"] != "forking":
        r.err("pid_file", 'only a type = "forking" unit has a pid file')
    if (kw["group"] is not None or kw["groups"]) and kw["user"] is None:
        r.err("group" if kw["group"] is not None else "groups", "needs a user: name the user to run as")
    for key in ("requires", "after", "restart_with"):
        if name in kw[key]:
            r.err(key, f"{name!r} cannot depend on itself: {name} -> {name}")
    kw["when"] = load_when(r)
    prepare = _load_prepare(r)
    if prepare is not None:
        kw["prepare"] = prepare
    lg = r.sub("log", {"file", "max_bytes", "backups", "tail"})
    if lg is not None:
        L = S.LogSpec
        kw["log"] = L(lg.string("file", L.file), lg.size("max_bytes", L.max_bytes),
                      lg.integer("backups", L.backups), lg.str_list("tail") or L.tail)
    kw["ready"] = _load_ready(r)
    restart = _load_restart(r)
    if restart is not None:
        kw["restart"] = restart
    kw["live"] = _load_live(r, kw["ready"])
    sp = r.sub("stop", {"signal", "timeout", "mode"})
    if sp is not None:
        kw["stop"] = S.StopSpec(sp.converted("signal", parse_signal, S.StopSpec.signal),
                                sp.duration("timeout", S.StopSpec.timeout),
                                sp.enum("mode", S.STOP_MODES, S.StopSpec.mode))
    kw["on_log"] = _load_rules(r)
    if external:
        _check_external(r, kw["ready"], kw["live"])
    return S.UnitSpec(name=name, file=path, command=command or (), sources=sources,
                      origins=MappingProxyType(dict(origins or {})), **kw)


def load_when(r: Reader) -> MappingProxyType[str, tuple[object, ...]]:
    t = r.table("when")
    out: dict[str, tuple[object, ...]] = {}
    for k, v in (t or {}).items():
        key = f"when.{k}"
        if k not in WHEN_FACTS:
            hint = (f"; {k!r} is a unit key: write it above [when] (a table runs to the next [header])"
                    if k in UNIT_KEYS else "")
            r.err(key, f"unknown condition (known: {', '.join(WHEN_FACTS)}){hint}")
            continue
        kind, choices = WHEN_FACTS[k]
        values = v if isinstance(v, list) else [v]
        ok = True
        for x in values:
            if not isinstance(x, kind) or (kind is int and isinstance(x, bool)):
                r.err(key, f"expected {kind.__name__} values, got {typename(x)}")
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


def _load_prepare(r: Reader) -> S.PrepareSpec | None:
    p = r.sub("prepare", {"command", "when_changed", "timeout"})
    if p is None:
        return None
    cmd = p.str_list("command", nonempty=True)
    if "command" not in p.data:
        p.err("command", "missing: [prepare] needs a command")
    if not cmd:
        return None
    P = S.PrepareSpec
    return P(cmd, p.str_list("when_changed") or P.when_changed, p.duration("timeout", P.timeout))


def _load_ready(r: Reader) -> S.ReadySpec:
    R = S.ReadySpec
    rd = r.sub("ready", {"log", "http", "tcp", "exec", "mode", "timeout", "interval", "notify"})
    if rd is None:
        return R()
    http, tcp = _load_probes(rd)
    spec = R(
        log=rd.regex("log"), http=http, tcp=tcp, exec=rd.str_list("exec", nonempty=True),
        mode=rd.enum("mode", S.READY_MODES, R.mode), timeout=rd.duration("timeout", R.timeout),
        interval=rd.duration("interval", R.interval), notify=rd.boolean("notify", R.notify))
    if spec.interval <= 0:
        rd.err("interval", "must be more than 0")
    return spec


def _load_probes(t: Reader) -> tuple[S.HttpCheck | None, str | None]:
    """The ``http`` and ``tcp`` checks of ``[ready]`` or ``[live]``, their shapes checked (``${NAME}`` left to
    the plan)."""
    http = _load_http(t)
    if http is not None and not http.url.startswith(("http://", "https://", "${")):
        t.err("http", f"{http.url!r} is not an http:// or https:// URL")
        http = None
    tcp = t.string("tcp", None)
    if tcp is not None and "${" not in tcp and not _TCP_ADDRESS.match(tcp):
        t.err("tcp", f"{tcp!r} is not HOST:PORT")
        tcp = None
    return http, tcp


def _load_live(r: Reader, ready: S.ReadySpec) -> S.LiveSpec | None:
    L = S.LiveSpec
    lv = r.sub("live", {"log", "http", "tcp", "exec", "mode", "interval", "timeout", "failures", "action",
                        "watchdog"})
    if lv is None:
        return None
    http, tcp = _load_probes(lv)
    spec = L(log=lv.regex("log"), http=http, tcp=tcp, exec=lv.str_list("exec", nonempty=True),
             mode=lv.enum("mode", S.READY_MODES, L.mode), interval=lv.duration("interval", L.interval),
             timeout=lv.duration("timeout", L.timeout), failures=lv.integer("failures", L.failures, minimum=1),
             action=lv.enum("action", S.LIVE_ACTIONS, L.action),
             watchdog=lv.converted("watchdog", parse_duration, None))
    for key in ("interval", "timeout", "watchdog"):
        if (getattr(spec, key) or 1) <= 0:
            lv.err(key, "must be more than 0")
    if spec.watchdog is not None and not ready.notify:
        lv.err("watchdog", "needs [ready] notify = true (WATCHDOG=1 comes on the service's NOTIFY_SOCKET)")
    if not spec.has_checks:
        r.err("live", "has no check: give at least one of log, http, tcp, exec, watchdog")
        return None
    return spec


def _check_external(r: Reader, ready: S.ReadySpec, live: S.LiveSpec | None) -> None:
    """An external unit: no key of a local process, and a ``[ready]`` that can be checked from here."""
    for key in EXTERNAL_NOT_ALLOWED:
        if key in r.data:
            r.err(key, "not allowed in an external unit (it runs elsewhere: qasup starts, stops and logs "
                       "nothing for it)")
    seen = "a log check is meaningless there (qasup sees no output of a service that runs elsewhere)"
    notify = "sd_notify is meaningless there (a service that runs elsewhere has no NOTIFY_SOCKET of qasup's)"
    for table, spec in (("ready", ready), ("live", live)):
        if spec is not None and spec.log is not None:
            r.err(f"{table}.log", f"not allowed in an external unit: {seen}")
    if ready.notify:
        r.err("ready.notify", f"not allowed in an external unit: {notify}")
    if live is not None and live.watchdog is not None:
        r.err("live.watchdog", f"not allowed in an external unit: {notify}")
    if not any(x is not None for x in (ready.http, ready.tcp, ready.exec)):
        where = "its [ready] has none" if isinstance(r.raw("ready"), dict) else "it has no [ready]"
        r.err("ready", f"an external unit needs a [ready] with an http, tcp or exec check ({where}): qasup "
                       "knows it only through its probes")


def _account_ok(r: Reader, key: str, value: str) -> bool:
    if _ACCOUNT.match(value):
        return True
    r.err(key, f"{value!r} is not a user or group name, nor a number")
    return False


def _account(r: Reader, key: str) -> str | None:
    v = r.string(key, None)
    return v if v is None or _account_ok(r, key, v) else None


def _load_http(rd: Reader) -> S.HttpCheck | None:
    """``[ready] http``: a URL, or a table with ``url``, ``method`` and ``expect``."""
    H = S.HttpCheck
    hv = rd.raw("http")
    if isinstance(hv, str):
        return H(hv)
    if isinstance(hv, dict):
        h = rd.sub("http", {"url", "method", "expect"})
        assert h is not None
        url = h.string("url")
        if url is None:
            h.err("url", "missing: an http check needs a url")
        method = h.string("method", H.method)
        if not _HTTP_METHOD.match(method or ""):
            h.err("method", f"{method!r} is not an HTTP method such as GET or POST")
        return None if url is None else H(url, method, h.string("expect", H.expect))
    if hv is not MISSING:
        rd.err("http", f"expected a URL string or a table, got {typename(hv)}")
    return None


def _load_restart(r: Reader) -> S.RestartSpec | None:
    rs = r.sub("restart", {"policy", "delay", "max_delay", "reset_after", "max_restarts", "window", "on_give_up"})
    if rs is None:
        return None
    d = S.RestartSpec
    restart = S.RestartSpec(
        rs.enum("policy", S.RESTART_POLICIES, d.policy), rs.duration("delay", d.delay),
        rs.duration("max_delay", d.max_delay), rs.duration("reset_after", d.reset_after),
        rs.integer("max_restarts", d.max_restarts), rs.duration("window", d.window),
        rs.enum("on_give_up", S.GIVE_UP_ACTIONS, d.on_give_up))
    if restart.max_delay < restart.delay:
        rs.err("max_delay", f"must be at least delay ({restart.delay:g}s)")
    return restart


def _load_rules(r: Reader) -> tuple[S.LogRule, ...]:
    v = r.raw("on_log")
    if v is MISSING:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        r.err("on_log", "expected an array of tables ([[on_log]])")
        return ()
    L = S.LogRule
    rules = []
    for i, t in enumerate(v, 1):
        rr = Reader(r.probs, r.file, t, f"on_log[{i}].", {"match", "action", "count", "within", "context",
                                                         "message"}, r.origins)
        match = rr.regex("match")
        if "match" not in t:
            rr.err("match", "missing: a rule needs a regex to match")
        rule = L(match or "", rr.enum("action", S.RULE_ACTIONS, L.action), rr.integer("count", L.count, minimum=1),
                 rr.duration("within", L.within), rr.integer("context", L.context), rr.string("message", L.message))
        if match:
            rules.append(rule)
    return tuple(rules)
