"""Scenario 8, Sanic 25 with 4 workers: qasup with the shipped unit's ``[stop]`` and ``[ready]`` tables, supervisord
with ``stopasgroup=true`` and with ``stopasgroup=false``, three stacks at once; tries of a 2 s request in flight
during ``stop`` (the order of the daemons rotating), then SIGKILL of each daemon. Sanic's processes are found by
``BENCH_APP=<tag>`` in their environment."""

from __future__ import annotations

import json
import os
import signal
import threading
import tomllib
import urllib.error
from pathlib import Path

from benchkit.daemons import Daemon, Qasup, Supervisord, _q, _qlist
from benchkit.procs import median, timed_run
from benchkit.realkit import (
    RealResult,
    app_of,
    attempt,
    count_all_until_zero,
    free_port,
    http_get,
    kill_all,
    log_count,
    log_size,
    members,
    one_line,
    qasup_stack,
    shutdown,
    supervisord_stack,
    wait_until,
)
from benchkit.scenarios import Ctx

REPO = Path(__file__).resolve().parents[2]
SHIPPED_SANIC = REPO / "services.d" / "sanic.toml"
Q_SANIC, S_GROUP, S_MAIN = "qasup", "supervisord stopasgroup=true", "supervisord stopasgroup=false"
SANIC_WHO = (Q_SANIC, S_GROUP, S_MAIN)

APP = '''\
import asyncio, os, sys
from sanic import Sanic, response
app = Sanic("benchsanic")

@app.get("/")
async def ok(request):
    return response.text("ok")

@app.get("/slow")
async def slow(request):
    print(f"SLOW BEGIN {os.getpid()}", flush=True)
    await asyncio.sleep(2.0)
    print(f"SLOW END {os.getpid()}", flush=True)
    return response.text("done")

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), workers=4, access_log=False, motd=False)
'''

SANIC_ROWS = [
    ("config", "configuration"),
    ("processes", "processes of the service (main, 4 workers, resource tracker, manager)"),
    ("request", "a 2 s request in flight during `stop`: completed"),
    ("stop_time", "`stop` wall time (the command, from the outside)"),
    ("stop_left", "processes left when `stop` returned"),
    ("kill", "SIGKILL of the daemon: processes left after 5 s"),
]
SANIC_CONFIG = {S_GROUP: "`stopasgroup=true killasgroup=true`", S_MAIN: "`stopasgroup=false killasgroup=false`"}


def shipped_tables() -> tuple[dict, dict]:
    """The shipped Sanic unit's [stop] and [ready] tables."""
    try:
        unit = tomllib.loads(SHIPPED_SANIC.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}, {}
    return dict(unit.get("stop", {})), dict(unit.get("ready", {}))


def toml_table(name: str, table: dict) -> list[str]:
    out = [f"[{name}]"]
    for k, v in table.items():
        out.append(f"{k} = {json.dumps(v)}")
    return out


class SanicStack:
    def __init__(self, who: str, d: Daemon, port: int, tag: str) -> None:
        self.who, self.d, self.port, self.tag = who, d, port, tag
        self.log = d.root / "logs" / "svc.log"
        self.root = app_of(tag)
        self.up = False
        self.stopped = False      # stopped by a try, to be started again

    def ctl(self, verb: str) -> tuple[int, float, str]:
        if isinstance(self.d, Qasup):
            return timed_run([self.d.python, "-m", "supervisor", verb, "svc"], self.d.environment(), cwd=self.d.root,
                             timeout=90)
        assert isinstance(self.d, Supervisord)
        return timed_run([str(self.d.venv / "bin" / "supervisorctl"), "-c", str(self.d.conf), verb, "svc"],
                         self.d.environment(), cwd=self.d.root, timeout=90)

    def wait_workers(self, start: int, timeout: float = 90) -> None:
        """Four ``Worker ready`` lines since offset ``start``, then ``GET /`` answers 200."""
        def ok() -> bool:
            if not self.d.alive():
                raise RuntimeError("the daemon exited")
            if log_count(self.log, b"Worker ready", start) < 4:
                return False
            try:
                return http_get(self.port, "/", 2)[0] == 200
            except (OSError, urllib.error.URLError):
                return False
        wait_until(ok, timeout, "4 'Worker ready' lines and an answer on /")
        self.up = True


def slow_request(port: int, out: dict) -> None:
    try:
        status, body = http_get(port, "/slow", 15)
        out["outcome"] = "completed" if status == 200 and body == b"done" else f"HTTP {status}"
    except urllib.error.HTTPError as e:
        out["outcome"] = f"HTTP {e.code}"
    except (OSError, urllib.error.URLError) as e:
        reason = getattr(e, "reason", e)
        out["outcome"] = type(reason).__name__ if isinstance(reason, BaseException) else type(e).__name__


def sanic_case(ctx: Ctx, res: RealResult, tries: int) -> None:
    stop, ready = shipped_tables()
    mode = stop.get("mode", "group")
    res.put("config", Q_SANIC, f"shipped `[stop]`: mode `{mode}`, timeout {stop.get('timeout', '10s')}")
    stacks: list[SanicStack] = []
    try:
        for who in SANIC_WHO:
            folder = ctx.folder("s8-sanic-" + who.replace(" ", "-").replace("=", "-"))
            folder.mkdir(parents=True)
            (folder / "app.py").write_text(APP)
            port, tag = free_port(), f"{ctx.marker}-{folder.name}"
            argv = [ctx.python, "-u", str(folder / "app.py"), str(port)]
            d: Daemon
            if who == Q_SANIC:
                unit = [f"command = {_qlist(argv)}", f"env = {{ BENCH_APP = {_q(tag)} }}",
                        *toml_table("ready", ready or {"log": "Starting worker", "timeout": "120s"}),
                        *toml_table("stop", stop)]
                d = qasup_stack(ctx, folder, "\n".join(unit) + "\n")
            else:
                grp = "true" if who == S_GROUP else "false"
                d = supervisord_stack(ctx, folder, ["command=" + " ".join(argv), f'environment=BENCH_APP="{tag}"',
                                                    f"stopasgroup={grp}", f"killasgroup={grp}"])
            stacks.append(SanicStack(who, d, port, tag))
        for st in stacks:
            st.d.start()
        for st in stacks:
            attempt(res, st.who, st.d, st.wait_workers, 0)
            if st.up:
                res.add("sanic_processes", st.who, len(members(st.root)))
        outcomes: dict[str, list[str]] = {who: [] for who in SANIC_WHO}
        for t in range(tries):
            for st in stacks[t % len(stacks):] + stacks[:t % len(stacks)]:
                if st.up:
                    attempt(res, st.who, st.d, sanic_try, res, st, outcomes[st.who])
            start_all(res, [st for st in stacks if st.stopped])   # together: no measurement runs meanwhile
        sanic_kill(res, stacks)
        for who in SANIC_WHO:
            done = outcomes[who]
            n_ok = done.count("completed")
            dropped = sorted({o for o in done if o != "completed"})
            res.put("request", who, f"{n_ok}/{len(done)} completed" + (f" ({', '.join(dropped)})" if dropped else ""))
            stops = res.samples.get("sanic_stop_s", {}).get(who)
            left = res.samples.get("sanic_left_after_stop", {}).get(who)
            if stops:
                res.put("stop_time", who, f"{median(stops):.2f} s (median of {len(stops)})")
            if left is not None:
                res.put("stop_left", who, f"{int(max(left))}" + (" (worst)" if len(left) > 1 else ""))
            if (n := res.samples.get("sanic_processes", {}).get(who)):
                res.put("processes", who, f"{int(n[0])}")
            if who == Q_SANIC and done and n_ok < len(done):
                res.misses.append(f"Sanic, `[stop] mode = \"{mode}\"`: {len(done) - n_ok} of {len(done)} requests in "
                                  f"flight dropped by `qasup stop`")
            if who == Q_SANIC and left and max(left):
                res.misses.append(f"Sanic: `qasup stop` returned with {int(max(left))} processes left")
    finally:
        for st in stacks:
            shutdown(ctx, st.d, st.root)


def sanic_try(res: RealResult, st: SanicStack, outcomes: list[str]) -> None:
    mark = log_size(st.log)
    out: dict[str, str] = {}
    th = threading.Thread(target=slow_request, args=(st.port, out), daemon=True)
    th.start()
    wait_until(lambda: log_count(st.log, b"SLOW BEGIN", mark) >= 1, 15, "'SLOW BEGIN' line")
    code, wall, text = st.ctl("stop")
    st.up = False
    left = len(members(st.root))
    th.join(20)
    outcomes.append(out.get("outcome", "no answer in 20 s"))
    res.add("sanic_completed", st.who, 1.0 if out.get("outcome") == "completed" else 0.0)
    res.add("sanic_stop_s", st.who, wall)
    res.add("sanic_left_after_stop", st.who, left)
    if code != 0:
        res.notes.append(f"{st.who}: stop exited {code}: {one_line(text, 200)}")
    kill_all(st.root)          # a leftover would hold the port: the next start must be a fresh one
    st.stopped = True


def start_all(res: RealResult, stacks: list[SanicStack]) -> None:
    """``start`` every stopped stack at once, then wait for each one's four workers."""
    marks = {st.who: log_size(st.log) for st in stacks}
    answers: dict[str, tuple[int, float, str]] = {}
    threads = [threading.Thread(target=lambda st=st: answers.__setitem__(st.who, st.ctl("start")), daemon=True)
               for st in stacks]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    for st in stacks:
        st.stopped = False
        code, _, text = answers.get(st.who, (-1, 0.0, "no answer in 120 s"))
        if code != 0:
            res.fail(st.who, f"start exited {code}: {one_line(text, 300)}", st.d)
            continue
        attempt(res, st.who, st.d, st.wait_workers, marks[st.who])


def sanic_kill(res: RealResult, stacks: list[SanicStack]) -> None:
    """SIGKILL every daemon whose service is up, then one common 5 s deadline for their processes."""
    up = [st for st in stacks if st.up and st.d.alive()]
    before = {st.who: len(members(st.root)) for st in up}
    for st in up:
        os.kill(st.d.pid, signal.SIGKILL)
    left = count_all_until_zero({st.who: st.root for st in up}, 5)
    for who, n in left.items():
        res.add("sanic_left_after_kill", who, n)
        res.put("kill", who, f"{n} of {before[who]} left")
        if who == Q_SANIC and n:
            res.misses.append(f"Sanic: {n} of {before[who]} processes outlived SIGKILL of qasup")
