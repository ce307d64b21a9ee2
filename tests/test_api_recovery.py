"""A fault in the control API never takes PID 1 with it: the daemon says so, serves the API again (bound afresh),
and its services, signals and ordered shutdown go on as before.

The fault is injected into a real ``qasup up``: a wrapper script replaces ``supervisor.control.server.serve``
with one whose first run serves for a moment, then raises (as a bug in the accept loop would).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from enginehelp import Stack, Up, poll, stack, up  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]

INJECT = '''\
import runpy, sys
from functools import partial
import anyio
import supervisor.control.server as server

real = server.serve
runs = []
serve_for = float(sys.argv[1])


async def flaky(*args, task_status=anyio.TASK_STATUS_IGNORED, **kwargs):
    runs.append(1)
    if len(runs) > 1:
        return await real(*args, task_status=task_status, **kwargs)
    async with anyio.create_task_group() as tg:
        task_status.started(await tg.start(partial(real, *args, **kwargs)))
        print("[inject] the first API is served", flush=True)
        await anyio.sleep(serve_for)
        raise RuntimeError("injected fault in the API")


server.serve = flaky
sys.argv = ["qasup", *sys.argv[sys.argv.index("-m") + 2:]]   # the `up ...` that enginehelp.Up appends
runpy.run_module("supervisor", run_name="__main__", alter_sys=True)
'''


def _status(u: Up) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QASUP_SOCKET"}   # the stack's own socket, found from its root
    return subprocess.run([sys.executable, "-m", "supervisor", "status"], capture_output=True, text=True, timeout=20,
                          cwd=u.root, env=env)


def test_a_crashed_api_is_served_again_and_the_daemon_still_stops_in_order(stack, up, tmp_path):
    stack.stack(name="flaky-api")
    stack.unit("web", command=["/bin/sh", "-c", "echo READY; exec sleep 3600"], ready={"log": "^READY"})
    inject = tmp_path / "inject.py"
    inject.write_text(INJECT)
    u = up().start("--no-echo", wrap=[sys.executable, str(inject), "0.4"])
    u.wait_out("[inject] the first API is served", 20)
    u.wait_out("api: the control API stopped on an error (RuntimeError: injected fault in the API); "
               "serving it again in 0.5s", 10)
    # served again: status answers (the first tries may meet no socket while it is bound afresh)
    answered = poll(lambda: (r := _status(u)).returncode == 0 and r, 15,
                    lambda: f"status never answered again; output:\n{u.out}")
    assert "web" in answered.stdout and "ready" in answered.stdout
    assert u.proc is not None and u.proc.poll() is None   # the daemon and its service ran on
    u.signal(signal.SIGTERM)
    assert u.wait(15) == 0, u.out
    assert u.leftovers() == []
