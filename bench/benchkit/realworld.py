"""Scenario 8: real programs side by side: a daemonizing nginx and Sanic with 4 workers, under qasup and
under supervisord, in one run, alternating which daemon goes first.

nginx (its default ``daemon on``: the launcher forks the master into the background and exits 0):

* qasup with ``type = "forking"`` + ``pid_file``; qasup's default ``type = "simple"`` (a daemonized start is a
  failed start, with a message); supervisord with its defaults (``startsecs=1``, ``autorestart=unexpected``),
  and with the bench's settings (``startsecs=0``, ``autorestart=true``, ``stopasgroup/killasgroup``).
* All four stacks run at once (own prefix and port each) for the same observation window: the state each
  daemon reports, how many times it launched nginx, whether the pid it reports is nginx's master; then
  ``stop`` (does nginx go away?), then SIGKILL of the daemon (how many nginx processes are left).

Sanic 25 with 4 workers (7 processes: main, 4 workers, multiprocessing's resource tracker, Sanic's manager):

* qasup with the shipped unit's ``[stop]`` and ``[ready]`` tables (``services.d/sanic.toml``); supervisord with
  ``stopasgroup=true killasgroup=true`` and with ``stopasgroup=false killasgroup=false`` (otherwise defaults).
* All three stacks at once, then N tries, the order of the daemons rotating each try: a 2 s request in flight
  (its handler has printed ``SLOW BEGIN``), ``stop`` (timed from the outside), completed or dropped, processes
  left when ``stop`` returned, ``start`` again; finally SIGKILL of each daemon and the processes left.

Processes are found in ``/proc``, never by the daemons' words: nginx by its prefix path in the master's argv
(nginx overwrites its environ with its title) and the master's children; Sanic's by ``BENCH_APP=<tag>`` in
their environment. Zombies do not count. Everything found is SIGKILLed at the end of each case, whatever
happened. Where qasup does not do what issue 12 asks, ``RealResult.misses`` says so (the report lists it under
"Where qasup is behind").

Modules: this one (entry and report), ``realnginx.py`` and ``realsanic.py`` (the cases), ``realkit.py`` (the
result type, ``/proc``, waits, stacks). ``python bench/run.py --only 8 --out /tmp/real.md`` runs it alone
(about 80 s on 2 busy cores); nginx is installed with apt-get when missing (skipped with a note otherwise).
"""

from __future__ import annotations

import subprocess

from benchkit.realkit import RealResult, ensure_nginx
from benchkit.realnginx import NGINX_HEAD, NGINX_ROWS, NGINX_WHO, nginx_case
from benchkit.realsanic import SANIC_CONFIG, SANIC_ROWS, SANIC_WHO, sanic_case
from benchkit.scenarios import Ctx

__all__ = ["SID", "TITLE", "RealResult", "run", "markdown", "console", "method"]

SID = 8
TITLE = "real programs: daemonizing nginx, Sanic with 4 workers"


def run(ctx: Ctx, res: RealResult, quick: bool) -> None:
    nginx = ensure_nginx(ctx.log)
    if nginx is None:
        res.notes.append("nginx case skipped: nginx is not installed and could not be installed with apt-get")
    else:
        ctx.log("  daemonizing nginx under 4 stacks at once")
        nginx_case(ctx, res, nginx, window=6.0 if quick else 8.0)
    probe = subprocess.run([ctx.python, "-c", "import sanic"], capture_output=True)
    if probe.returncode != 0:
        res.notes.append(f"Sanic case skipped: {ctx.python} cannot import sanic (pip install -e '.[test]')")
        return
    ctx.log("  Sanic with 4 workers under 3 stacks at once")
    sanic_case(ctx, res, tries=2 if quick else 3)


# ---------------------------------------------------------------------------------------------- report

def _table_md(head: list[str], rows: list[tuple[str, str]], who: tuple[str, ...], facts: dict) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in rows:
        cells = [label, *[facts.get(key, {}).get(w, "-") for w in who]]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def markdown(res: RealResult) -> list[str]:
    facts = {k: dict(v) for k, v in res.facts.items()}
    for w, text in SANIC_CONFIG.items():
        facts.setdefault("config", {})[w] = text
    out = []
    if any(k in facts for k, _ in NGINX_ROWS):
        out += ["### nginx, daemonizing (its default `daemon on`)", "",
                *_table_md(["measurement", *[NGINX_HEAD[w] for w in NGINX_WHO]], NGINX_ROWS, NGINX_WHO, facts), ""]
    if any(k in facts for k in ("request", "kill")) and any(w in facts.get("request", {}) for w in SANIC_WHO):
        out += ["### Sanic 25 with 4 workers", "",
                *_table_md(["measurement", "qasup", "supervisord `stopasgroup=true`", "supervisord `stopasgroup=false`"],
                           SANIC_ROWS, SANIC_WHO, facts), ""]
    return out


def console(res: RealResult) -> str:
    lines = []
    for title, rows, who in (("nginx", NGINX_ROWS, NGINX_WHO), ("sanic", SANIC_ROWS, SANIC_WHO)):
        for key, label in rows:
            for w in who:
                if (text := res.facts.get(key, {}).get(w)) is not None:
                    lines.append(f" 8 {title:<6} {label[:48]:<48} {w:<30} {text}")
    return "\n".join(lines)


METHOD = """\
8. **Real programs** (one pass after the rounds, not per round). `nginx` from Debian, daemonizing (its
   default `daemon on`: the launcher exits 0 once the master runs in the background; 2 workers), under four
   stacks at once, each with its own prefix and port, launched in the order qasup `type = "forking"` +
   `pid_file`, supervisord with its defaults (`startsecs=1`, `autorestart=unexpected`), qasup's default
   `type = "simple"`, supervisord with `startsecs=0 autorestart=true stopasgroup=true`. After a {window:g} s
   window: the state and pid each daemon reports (`qasup status --json`, `supervisorctl status`/`pid`), its
   launches of nginx in the window (qasup's `starting` events, supervisord's `spawned:` lines), the nginx
   processes running; then `stop` of each, and one common 3 s grace for nginx to go; then SIGKILL of every
   daemon (qasup forking: `start` again first) and one common 5 s deadline. nginx processes are counted in
   `/proc` by the prefix path in the master's argv plus the master's children (nginx overwrites its
   environment with its title); zombies do not count. Then Sanic 25 with 4 workers and a `/slow` route
   (2 s) under qasup (the shipped `services.d/sanic.toml` `[stop]` and `[ready]` tables), supervisord with
   `stopasgroup=true killasgroup=true` and supervisord with `stopasgroup=false killasgroup=false`, three stacks
   at once: {tries} tries, the order of the daemons rotating each try, of a request in flight (its handler
   has printed `SLOW BEGIN`) during `stop` (the command timed from the outside; the processes left when it
   returns), then `start` of the three together and four `Worker ready` lines each; last, SIGKILL of every
   daemon and a common 5 s deadline. Sanic's processes are counted by a tag in their environment. A row
   where qasup does not do what the issue asks (ready with the master's pid, a failed start with a message,
   nothing left, every request completed) is listed under "Where qasup is behind".
"""


def method(quick: bool) -> str:
    return METHOD.format(tries=2 if quick else 3, window=6.0 if quick else 8.0)


def reading(res: RealResult) -> list[str]:
    """Plain sentences that put scenario 8's outcomes side by side."""
    f = res.facts
    out = []
    ng = {k: f.get(k, {}) for k in ("state", "stop", "kill")}

    def left(row: str, who: str) -> str:
        return ng[row][who].rsplit(": ", 1)[-1].replace(" left", "").split(" (")[0]

    fork, sv = NGINX_WHO[0], NGINX_WHO[1]
    if all(w in ng["kill"] and w in ng["stop"] and w in ng["state"] for w in (fork, sv)):
        out.append(f"Daemonizing nginx: qasup with `type = \"forking\"` reports {ng['state'][fork]}; its `stop` "
                   f"leaves {left('stop', fork)} nginx processes and a SIGKILL of qasup {left('kill', fork)}. "
                   f"supervisord (defaults) reports {ng['state'][sv].split(';')[0]} while the first nginx runs "
                   f"unsupervised; its `stop` leaves {left('stop', sv)} and its SIGKILL {left('kill', sv)}.")
    req, kill = f.get("request", {}), f.get("kill", {})
    if all(w in req for w in SANIC_WHO):
        q, g, m = SANIC_WHO
        out.append(f"Sanic with 4 workers, a 2 s request in flight during `stop`: qasup {req[q]}, supervisord "
                   f"`stopasgroup=true` {req[g]}, `stopasgroup=false` {req[m]}"
                   + (f"; after SIGKILL of the daemon: qasup {kill[q]}, supervisord {kill[g]} / {kill[m]}."
                      if all(w in kill for w in SANIC_WHO) else "."))
    return out
