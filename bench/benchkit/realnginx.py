"""Scenario 8, nginx: daemonizing (its default ``daemon on``) under qasup ``type = "forking"`` + ``pid_file``,
qasup's default ``type = "simple"``, supervisord's defaults and supervisord ``startsecs=0 autorestart=true``,
all four at once (own prefix and port each), for the same window; then ``stop``; then SIGKILL of the daemon.
nginx processes are found by the prefix path in the master's argv and the master's children."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
from pathlib import Path

from benchkit.daemons import Daemon, Qasup, Supervisord, _q, _qlist
from benchkit.realkit import (
    RealResult,
    attempt,
    count_all_until_zero,
    count_until_zero,
    free_port,
    http_get,
    members,
    nginx_of,
    one_line,
    plural,
    qasup_stack,
    qasup_verb,
    qstatus,
    shutdown,
    supervisord_stack,
)
from benchkit.scenarios import Ctx

Q_FORK, Q_SIMPLE, S_DEF, S_LOOP = "qasup forking", "qasup simple", "supervisord defaults", "supervisord loop"
NGINX_WHO = (Q_FORK, S_DEF, Q_SIMPLE, S_LOOP)          # launch order: qasup, supervisord, qasup, supervisord
NGINX_HEAD = {Q_FORK: 'qasup `type = "forking"` + `pid_file`', Q_SIMPLE: "qasup default (`type = \"simple\"`)",
              S_DEF: "supervisord defaults", S_LOOP: "supervisord `startsecs=0 autorestart=true`"}

NGINX_CONF = '''\
worker_processes 2;
pid nginx.pid;
error_log error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fcgi;
    uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
'''


NGINX_ROWS = [
    ("state", "state the daemon reports after the window; the pid it reports"),
    ("launches", "launches of nginx (spawns) in the window"),
    ("running", "nginx processes running at the end of the window"),
    ("failed_start", "qasup simple: its first failed start; nginx processes left then; its message"),
    ("stop", "`stop`: the command's answer; nginx processes left after it (3 s grace)"),
    ("kill", "SIGKILL of the daemon: nginx processes left after 5 s"),
]


def nginx_case(ctx: Ctx, res: RealResult, nginx: str, window: float) -> None:
    daemons: dict[str, Daemon] = {}
    prefixes: dict[str, Path] = {}
    ports: dict[str, int] = {}
    launched: dict[str, float] = {}
    try:
        for who in NGINX_WHO:
            folder = ctx.folder("s8-nginx-" + who.replace(" ", "-"))
            prefix = folder / "nginx"
            (prefix / "tmp").mkdir(parents=True)
            port = free_port()
            (prefix / "nginx.conf").write_text(NGINX_CONF.format(port=port))
            argv = [nginx, "-p", f"{prefix}/", "-c", "nginx.conf", "-e", "error.log"]
            if who in (Q_FORK, Q_SIMPLE):
                unit = [f"command = {_qlist(argv)}", f"cwd = {_q(str(prefix))}"]
                if who == Q_FORK:
                    unit += ['type = "forking"', 'pid_file = "nginx.pid"']
                unit += ["[ready]", f'tcp = "127.0.0.1:{port}"', 'timeout = "30s"', "[stop]", 'timeout = "10s"']
                daemons[who] = qasup_stack(ctx, folder, "\n".join(unit) + "\n")
            else:
                prog = ["command=" + " ".join(argv), f"directory={prefix}"]
                if who == S_LOOP:
                    prog += ["startsecs=0", "autorestart=true", "stopasgroup=true", "killasgroup=true"]
                daemons[who] = supervisord_stack(ctx, folder, prog)
            prefixes[who], ports[who] = prefix, port
            launched[who] = daemons[who].start()
        simple = daemons[Q_SIMPLE]
        assert isinstance(simple, Qasup)
        first_failure = wait_window(simple, prefixes[Q_SIMPLE], max(launched.values()) + window)
        for who in NGINX_WHO:
            attempt(res, who, daemons[who], nginx_observe, res, who, daemons[who], prefixes[who], ports[who],
                    launched[who], window, first_failure if who == Q_SIMPLE else None)
        # stop: each in turn, then one common grace period for what should go away
        before = {who: len(members(nginx_of(prefixes[who]))) for who in NGINX_WHO}
        answers: dict[str, str] = {}
        for who in NGINX_WHO:
            attempt(res, who, daemons[who], nginx_stop, res, who, daemons[who], answers)
        left = count_all_until_zero({w: nginx_of(p) for w, p in prefixes.items()}, 3)
        for who, answer in answers.items():
            res.add("nginx_left_after_stop", who, left[who])
            res.put("stop", who, f"{answer}; nginx processes left: {left[who]} of {before[who]}")
            if who in (Q_FORK, Q_SIMPLE) and left[who]:
                res.misses.append(f"nginx, {NGINX_HEAD[who]}: `qasup stop` left {left[who]} nginx processes")
        # SIGKILL of every daemon (qasup forking: supervised again first), one common 5 s deadline
        fork = daemons[Q_FORK]
        assert isinstance(fork, Qasup)
        if fork.alive():
            attempt(res, Q_FORK, fork, qasup_verb, fork, "start")
        before = {who: len(members(nginx_of(prefixes[who]))) for who in NGINX_WHO}
        for who in NGINX_WHO:
            if daemons[who].alive():
                os.kill(daemons[who].pid, signal.SIGKILL)
        left = count_all_until_zero({w: nginx_of(p) for w, p in prefixes.items()}, 5)
        for who in NGINX_WHO:
            res.add("nginx_left_after_kill", who, left[who])
            res.put("kill", who, f"{left[who]} of {before[who]} left" + (" (none was running)" if not before[who]
                                                                        else ""))
            if who in (Q_FORK, Q_SIMPLE) and left[who]:
                res.misses.append(f"nginx, {NGINX_HEAD[who]}: {left[who]} nginx processes outlived SIGKILL of qasup")
    finally:
        for who, d in daemons.items():
            shutdown(ctx, d, nginx_of(prefixes[who]))


def wait_window(q: Qasup, prefix: Path, end: float) -> tuple[str, int] | None:
    """Sleep out the window, watching qasup's simple-mode stack for its first failed start: then the
    state and how many nginx processes are left (0.5 s grace)."""
    found = None
    while time.time() < end:
        if found is None:
            q.events.poll()
            ev = next((e for e in q.events.events if e.get("service") == "svc"
                       and e.get("state") in ("backoff", "failed", "stopped")), None)
            if ev is not None:
                found = (str(ev["state"]), count_until_zero(nginx_of(prefix), 0.5))
        time.sleep(0.02)
    return found


def nginx_observe(res: RealResult, who: str, d: Daemon, prefix: Path, port: int, t0: float, window: float,
                  first_failure: tuple[str, int] | None) -> None:
    procs = members(nginx_of(prefix))
    try:
        master = int((prefix / "nginx.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        master = None
    try:
        serving = http_get(port, "/", 2)[0] == 200
    except (OSError, urllib.error.URLError):
        serving = False
    res.add("nginx_running", who, len(procs))
    if isinstance(d, Qasup):
        if not d.alive():
            raise RuntimeError(f"qasup exited {d.proc.returncode if d.proc else '?'} before the window ended")
        st = qstatus(d, "svc")
        d.events.poll()
        starts = [e for e in d.events.events if e.get("service") == "svc" and e.get("state") == "starting"
                  and e.get("prev") != "starting" and e["ts"] <= t0 + window]
        launches, state, pid = len(starts), st["state"], st.get("pid")
        said = st.get("last_error") or ""
        how = plural(launches, "launch")
    else:
        assert isinstance(d, Supervisord) and d.watch is not None
        lines = [ln for t, ln in list(d.watch.lines) if t <= t0 + window]
        launches = sum(1 for ln in lines if "spawned: 'svc'" in ln)
        exits = [ln.split("exit status ", 1)[1].split(";")[0] for ln in lines
                 if "exited: svc (exit status " in ln]
        ends = ", ".join(f"{exits.count(c)} with exit {c}" for c in sorted(set(exits)))
        how = plural(launches, "launch") + (f" ({ends})" if exits else "")
        _, _, out = d.ctl("status", "svc")
        state = out.split()[1] if len(out.split()) > 1 else out.strip()
        said = " ".join(out.split()[2:]) if state not in ("RUNNING", "STARTING") else ""
        pid = None
        _, _, pid_out = d.ctl("pid", "svc")
        if pid_out.strip().isdigit() and int(pid_out.strip()) > 0:
            pid = int(pid_out.strip())
    res.add("nginx_launches", who, launches)
    reported = ("its pid is nginx's master (the pid file's)" if pid is not None and pid == master else
                f"its pid {pid} is not nginx's master ({master})" if pid is not None else "no pid")
    shown = said if who != Q_SIMPLE else ""     # qasup simple: its message has a row of its own
    res.put("state", who, f"`{state}`" + (f": {one_line(shown, 80)}" if shown else "") + f"; {reported}")
    res.put("launches", who, f"{how} in {window:g} s")
    res.put("running", who, f"{len(procs)} ({'serving' if serving else 'not serving'})")
    if who == Q_FORK and (state != "ready" or pid != master or launches != 1):
        res.misses.append(f"nginx, {NGINX_HEAD[who]}: qasup reports `{state}` with pid {pid} after {how} "
                          f"(expected `ready` with the master's pid {master}, one launch)")
    if who == Q_SIMPLE:
        if first_failure is None:
            res.put("failed_start", who, "no failed start in the window")
            res.misses.append(f"nginx, {NGINX_HEAD[who]}: no failed start in the window (state `{state}`)")
        else:
            res.put("failed_start", who, f"`{first_failure[0]}`; nginx processes left: {first_failure[1]}; "
                                         f"its message: \"{one_line(said, 400)}\"")
            if first_failure[0] == "stopped" or first_failure[1]:
                res.misses.append(f"nginx, {NGINX_HEAD[who]}: the daemonized start ended `{first_failure[0]}` "
                                  f"with {first_failure[1]} nginx processes left (expected a failed start, none left)")
        if "daemon" not in said.lower():
            res.misses.append(f"nginx, {NGINX_HEAD[who]}: no message saying that nginx daemonized "
                              f"(last error: {one_line(said) or 'none'})")


def nginx_stop(res: RealResult, who: str, d: Daemon, answers: dict[str, str]) -> None:
    if isinstance(d, Qasup):
        code, wall, out = qasup_verb(d, "stop")
        answer = f"exit {code}"
    else:
        assert isinstance(d, Supervisord)
        code, wall, out = d.ctl("stop", "svc")
        answer = f"`{one_line(out, 60)}`"
    res.add("nginx_stop_s", who, wall)
    answers[who] = f"{answer} in {wall:.2f} s"
