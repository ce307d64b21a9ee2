"""Capture the real Sanic output the shipped sanic units' patterns are checked against (test_sanic.py).

    .venv/bin/python tests/integration/samples/capture_sanic.py     # rewrites tests/integration/samples/sanic25-*.log

Each sample is what Sanic itself printed (stdout and stderr, one pipe, as qasup captures it) for one case, run
with tests/apps/sanic_workers.py and 4 workers, in both ways of starting Sanic: ``app.run()`` (how QAnything's
sanic_api.py starts) and the ``sanic`` command (which loads tracerite: tracebacks come boxed, ``╭ ... ╰``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS = HERE.parents[1] / "apps"
APP = APPS / "sanic_workers.py"
SANIC = Path(sys.executable).with_name("sanic")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str], env: dict[str, str], stop_on: bytes | None = None, timeout: float = 90) -> bytes:
    """Run Sanic in its own session (it SIGKILLs its own process group when a worker fails at start-up);
    with ``stop_on``, SIGTERM it once that text appeared and every worker said ready."""
    out = HERE / ".capture.tmp"
    with open(out, "wb") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env},
                             start_new_session=True, cwd=APPS)
    deadline = time.monotonic() + timeout
    try:
        while p.poll() is None and time.monotonic() < deadline:
            if stop_on and out.read_bytes().count(stop_on) >= 4:
                # Sanic 25's main process hangs for good on a SIGTERM that comes before it has seen every
                # worker's ack (a fraction of a second after they print "Worker ready"): give it a second.
                time.sleep(1)
                p.send_signal(signal.SIGTERM)
                p.wait(30)
                break
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    data = out.read_bytes()
    out.unlink()
    return data


def main() -> None:
    env = {"PYTHONPATH": str(APPS), "PYTHONUNBUFFERED": "1"}
    fail = {**env, "IT_SANIC_FAIL": "connect"}
    cli = [str(SANIC), "sanic_workers:app", "--host", "127.0.0.1", "--workers", "4", "--no-access-logs"]
    samples = {
        "sanic25-run-start-stop.log": run([sys.executable, "-u", str(APP), str(free_port())], env,
                                          stop_on=b"Worker ready"),
        "sanic25-run-startup-error.log": run([sys.executable, "-u", str(APP), str(free_port())], fail),
        "sanic25-cli-startup-error.log": run([*cli, "--port", str(free_port())], fail),
        "sanic25-run-missing-module.log": run([sys.executable, "-u", str(APP), str(free_port())],
                                              {**env, "IT_SANIC_FAIL": "import"}),
        "sanic25-cli-missing-module.log": run([*cli, "--port", str(free_port())], {**env, "IT_SANIC_FAIL": "import"}),
    }
    with socket.socket() as taken:   # a port another process holds
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        samples["sanic25-run-port-taken.log"] = run([sys.executable, "-u", str(APP), port], env)
        samples["sanic25-cli-port-taken.log"] = run([*cli, "--port", port], env)
    for name, data in samples.items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
