"""A real Sanic application under `qasup up`: ready comes from the 'Starting worker' line Sanic itself prints,
and its HTTP route answers once qasup says ready."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ports import free_port

pytest.importorskip("sanic", reason="sanic is a test dependency (pip install -e '.[test]')")

APP = Path(__file__).parent / "apps" / "sanic_app.py"


def test_real_sanic_ready_from_starting_worker(tmp_path):
    port = free_port()
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "sanic.toml").write_text(f"""
command = ["{sys.executable}", "-u", "{APP}", "{port}"]
[log]
file = "logs/debug_logs/sanic_api.log"
[ready]
log = 'Starting worker'
timeout = "60s"
""")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "up"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        status = {}
        while time.monotonic() < deadline:
            r = subprocess.run([sys.executable, "-m", "supervisor", "status", "--json"], cwd=tmp_path,
                               capture_output=True, text=True)
            if r.returncode == 0:
                status = json.loads(r.stdout)
                break
            time.sleep(0.05)
        assert status, "qasup never reported the Sanic service ready"
        assert status["services"][0]["state"] == "ready"
        # qasup said ready: the route answers (Sanic prints 'Starting worker' as it starts serving; allow the
        # listening socket a brief moment, bounded)
        body = None
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as resp:
                    body = json.loads(resp.read())
                    break
            except OSError:
                time.sleep(0.02)
        assert body == {"status": "ok"}
        log = (tmp_path / "logs" / "debug_logs" / "sanic_api.log").read_text()
        assert "Starting worker" in log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
