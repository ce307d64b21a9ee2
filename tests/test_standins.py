"""The demo's stand-ins (examples/standins/standin.py), run as real processes on free ports.

They must look like the services they replace: the real markers, health URLs and FastChat registration, the
failure modes STANDIN_FAIL asks for, and a prompt exit on SIGTERM. No process may outlive a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enginehelp import free_port, together, together_alone, together_results  # noqa: F401  (fixtures)

STANDIN = Path(__file__).resolve().parent.parent / "examples" / "standins" / "standin.py"
LOAD = "0.2"


class Proc:
    """A stand-in process whose output lines are collected by a reader thread."""

    def __init__(self, role: str, *args: str, env: dict[str, str] | None = None):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
        full_env.update({"STANDIN_LOAD_SECONDS": LOAD, **(env or {})})
        self.p = subprocess.Popen([sys.executable, str(STANDIN), role, *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=full_env, start_new_session=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 5.0) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r}; got {self.lines!r}")
                self.cond.wait(min(left, 0.1))

    def output(self) -> str:
        self.reader.join(timeout=5)
        return "\n".join(self.lines)

    def terminate(self, timeout: float = 3.0) -> int:
        """SIGTERM; the stand-in must exit within `timeout` seconds."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=timeout)

    def kill(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=5)
        if self.p.stdout:
            self.p.stdout.close()


@contextlib.contextmanager
def spawning() -> Iterator[Callable[..., Proc]]:
    """``spawn(ROLE, *ARGS, env=...)`` starts a stand-in; every one started is killed at the end."""
    procs: list[Proc] = []

    def start(role: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(role, *args, env=env)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()


TOGETHER_FIXTURES = {"spawn": spawning}   # the tests run side by side (enginehelp.together): each its own spawn


def http(method: str, url: str, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@together
def test_triton_listens_after_loading_and_stops_on_sigterm(spawn):
    h, g, m = free_port(), free_port(), free_port()
    t = spawn("triton", "--model-store=/model_repos/QAEnsemble_embed_rerank", f"--http-port={h}",
              f"--grpc-port={g}", f"--metrics-port={m}", "--log-verbose=1")
    t.wait_line(rf"Started HTTPService at 0\.0\.0\.0:{h}$")
    assert http("GET", f"http://127.0.0.1:{h}/v2/health/ready")[0] == 200
    assert http("GET", f"http://127.0.0.1:{m}/metrics")[0] == 200
    socket.create_connection(("127.0.0.1", g), timeout=2).close()
    out = "\n".join(t.lines)
    assert "successfully loaded 'embed'" in out and "successfully loaded 'rerank'" in out
    assert "'base'" not in out          # QAEnsemble_embed_rerank holds no LLM
    start = time.monotonic()
    assert t.terminate() == 0
    assert time.monotonic() - start < 2
    assert "Signal (15) received." in t.output()


@together
def test_fastchat_lists_the_model_only_once_the_worker_registered(spawn, tmp_path):
    c, w, o = free_port(), free_port(), free_port()
    model = tmp_path / "Qwen-7B-Chat"
    model.mkdir()
    (model / "config.json").write_text("{}")
    ctl = spawn("fastchat-controller", "--host", "0.0.0.0", "--port", str(c))
    ctl.wait_line(rf"Uvicorn running on http://0\.0\.0\.0:{c}")
    assert json.loads(http("POST", f"http://127.0.0.1:{c}/list_models")[1]) == {"models": []}
    api = spawn("fastchat-openai-api", "--host", "0.0.0.0", "--port", str(o),
                "--controller-address", f"http://0.0.0.0:{c}")
    worker = spawn("fastchat-worker", "--flavor", "vllm", "--host", "0.0.0.0", "--port", str(w),
                   "--controller-address", f"http://0.0.0.0:{c}", "--worker-address", f"http://0.0.0.0:{w}",
                   "--model-path", str(model), "--trust-remote-code", "--block-size", "32",
                   env={"STANDIN_LOAD_SECONDS": "0.6"})
    worker.wait_line("Loading the model")
    assert json.loads(http("POST", f"http://127.0.0.1:{c}/list_models")[1]) == {"models": []}
    worker.wait_line(rf"Uvicorn running on http://0\.0\.0\.0:{w}")
    assert json.loads(http("POST", f"http://127.0.0.1:{c}/list_models")[1]) == {"models": ["Qwen-7B-Chat"]}
    assert b"Qwen-7B-Chat" in http("POST", f"http://127.0.0.1:{w}/worker_get_status")[1]
    api.wait_line("Uvicorn running")
    models = json.loads(http("GET", f"http://127.0.0.1:{o}/v1/models")[1])
    assert [m["id"] for m in models["data"]] == ["Qwen-7B-Chat"]
    ctl.wait_line("Register a new worker: http://0.0.0.0:")
    assert worker.terminate() == 0 and api.terminate() == 0 and ctl.terminate() == 0


@together
def test_worker_without_model_files_fails_like_transformers(spawn, tmp_path):
    w = spawn("fastchat-worker", "--port", str(free_port()), "--model-path", str(tmp_path / "missing"))
    assert w.p.wait(timeout=5) == 1
    assert "does not appear to have a file named config.json" in w.output()


@together
def test_sanic_prints_starting_worker_and_serves_the_front_end(spawn):
    port = free_port()
    s = spawn("sanic", "--port", str(port), "--mode", "local")
    line = s.wait_line(r"Starting worker")
    pid = s.p.pid
    assert re.fullmatch(rf"\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}}\] \[{pid}\] \[INFO\] Starting worker \[{pid}\]",
                        line)
    status, body = http("GET", f"http://127.0.0.1:{port}/qanything/")
    assert status == 200 and b"QAnything" in body
    assert http("GET", f"http://127.0.0.1:{port}/api/health")[0] == 200
    assert http("GET", f"http://127.0.0.1:{port}/nope")[0] == 404
    assert s.terminate() == 0
    assert "Stopping worker" in s.output()


@together
def test_fail_modes(spawn):
    oom = spawn("rerank", "--port", str(free_port()), env={"STANDIN_FAIL": "oom"})
    crash = spawn("ocr", "--port", str(free_port()), env={"STANDIN_FAIL": "crash"})
    port = free_port()
    hang = spawn("sanic", "--name", "sanic", "--port", str(port), env={"STANDIN_FAIL": "ocr=oom,sanic=hang"})
    tb = spawn("ocr", "--name", "ocr", "--port", str(free_port()), env={"STANDIN_FAIL": "ocr=traceback"})
    assert crash.p.wait(timeout=5) == 3
    assert crash.output() == ""
    assert oom.p.wait(timeout=5) == 1
    assert "torch.cuda.OutOfMemoryError: CUDA out of memory" in oom.output()
    assert tb.p.wait(timeout=5) == 1
    assert "Traceback (most recent call last):" in tb.output()
    hang.wait_line("loading models")
    time.sleep(0.6)   # past the 0.2 s load: a hung stand-in still answers nothing
    assert hang.p.poll() is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert "Starting worker" not in "\n".join(hang.lines)
    assert hang.terminate() == 0


@together
def test_late_oom_after_ready(spawn):
    port = free_port()
    s = spawn("rerank", "--port", str(port), env={"STANDIN_FAIL": "late-oom", "STANDIN_LATE_SECONDS": "0.3"})
    s.wait_line("Starting worker")
    assert s.p.wait(timeout=5) == 1
    assert "CUDA out of memory" in s.output()


@together
def test_taken_port_is_reported_like_the_real_service(spawn):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        t = spawn("triton", f"--http-port={port}", f"--grpc-port={free_port()}", f"--metrics-port={free_port()}")
        assert t.p.wait(timeout=5) == 1
        assert f"Socket '0.0.0.0:{port}' already in use" in t.output()
        s = spawn("sanic", "--port", str(port))
        assert s.p.wait(timeout=5) == 1
        assert "address already in use" in s.output()


@together
def test_relay_needs_triton(spawn):
    r = spawn("llm-relay", f"--port={free_port()}", f"--model-url=0.0.0.0:{free_port()}")
    assert r.p.wait(timeout=5) == 1
    assert "[StatusCode.UNAVAILABLE] failed to connect" in r.output()
    g = free_port()
    t = spawn("triton", f"--http-port={free_port()}", f"--grpc-port={g}", f"--metrics-port={free_port()}")
    t.wait_line("Started HTTPService")
    port = free_port()
    r2 = spawn("llm-relay", "--host=0.0.0.0", f"--port={port}", f"--model-url=0.0.0.0:{g}")
    r2.wait_line("Starting worker")
    assert http("GET", f"http://127.0.0.1:{port}/health/ready")[0] == 200


@together
def test_sigterm_during_loading_exits_at_once(spawn):
    s = spawn("triton", f"--http-port={free_port()}", f"--grpc-port={free_port()}",
              f"--metrics-port={free_port()}", env={"STANDIN_LOAD_SECONDS": "30"})
    s.wait_line("loading: ")
    start = time.monotonic()
    assert s.terminate(timeout=3) == 0
    assert time.monotonic() - start < 1.5
