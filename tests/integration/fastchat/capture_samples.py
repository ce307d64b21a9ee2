"""Captures real output of FastChat 0.2.36 into tests/integration/samples/fastchat-*.log.

    tests/integration/.venv-fastchat/bin/python tests/integration/fastchat/capture_samples.py

Runs the real controller, model worker (the tiny model of tinymodel.py, on the CPU) and OpenAI API server with
the shipped units' flags on free loopback ports, stdout and stderr in one pipe as qasup reads them, and saves
what they print: a normal start (with one chat completion served), each server's port already taken, model
folders that are empty, incomplete or gone (with the shipped --load-8bit, and without it), ``python -m`` of a module that does not exist, an interpreter without
FastChat, and the vLLM and SGLang workers without their engines. tests/test_shipped_patterns.py checks every
shipped pattern against these files; they are committed, so that test needs no FastChat.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "samples"
PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}
WORKER_FLAGS = ["--load-8bit", "--num-gpus", "1", "--dtype", "bfloat16", "--conv-template", "qwen-7b-chat",
                "--device", "cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict[str, object] | None = None, timeout: float = 60) -> object:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


class Run:
    """One program, its output (one pipe for stdout and stderr) into samples/NAME."""

    def __init__(self, name: str, argv: list[str], cwd: Path, python: str = PY) -> None:
        self.path = SAMPLES / name
        self.out = open(self.path, "wb")
        self.p = subprocess.Popen([python, *argv], cwd=cwd, env=ENV, stdout=self.out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

    def finish(self, timeout: float = 300) -> int:
        rc = self.p.wait(timeout)
        self.out.close()
        return rc

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.finish(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.finish(30)


def bare_python() -> str:
    """An interpreter without FastChat (the first python3 on PATH outside this venv)."""
    venv_bin = str(Path(PY).parent)
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d != venv_bin)
    found = shutil.which("python3", path=path)
    if not found:
        raise SystemExit("no python3 outside the FastChat venv")
    r = subprocess.run([found, "-c", "import fastchat"], capture_output=True)
    if r.returncode == 0:
        raise SystemExit(f"{found} has fastchat; need an interpreter without it")
    return found


def main() -> None:
    sys.path.insert(0, str(HERE))
    import tinymodel

    SAMPLES.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qasup-fc-capture-"))
    try:
        models = work / "CustomLLM"
        tinymodel.write(str(models / "TinyChat"))
        (models / "Empty").mkdir()
        (models / "NoWeights").mkdir()
        (models / "NoTokenizer").mkdir()
        (models / "NoConfig").mkdir()
        for f in (models / "TinyChat").iterdir():
            if f.suffix == ".json":
                shutil.copy(f, models / "NoWeights")
        for f in ("config.json", "model.safetensors"):
            shutil.copy(models / "TinyChat" / f, models / "NoTokenizer")
        for f in (models / "TinyChat").glob("tokenizer*"):
            shutil.copy(f, models / "NoConfig")
        c, w, a = free_port(), free_port(), free_port()
        ctl_url = f"http://127.0.0.1:{c}"

        def worker_argv(model: str, port: int, flags: list[str] = WORKER_FLAGS) -> list[str]:
            return ["-m", "fastchat.serve.model_worker", "--host", "127.0.0.1", "--port", str(port),
                    "--controller-address", ctl_url, "--worker-address", f"http://127.0.0.1:{port}",
                    "--model-path", str(models / model), *flags]

        ctl = Run("fastchat-controller-start.log", ["-m", "fastchat.serve.controller", "--host", "127.0.0.1",
                                                    "--port", str(c)], work)
        wait_for(lambda: post(f"{ctl_url}/list_models", timeout=5) is not None, 120, "the controller")
        worker = Run("fastchat-worker-start.log", worker_argv("TinyChat", w), work)
        wait_for(lambda: "TinyChat" in post(f"{ctl_url}/list_models", timeout=5)["models"], 300, "the worker")
        api = Run("fastchat-api-start.log", ["-m", "fastchat.serve.openai_api_server", "--host", "127.0.0.1",
                                             "--port", str(a), "--controller-address", ctl_url], work)
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{a}/v1/models", timeout=5).status == 200, 120,
                 "the API server")
        post(f"http://127.0.0.1:{a}/v1/chat/completions",
             {"model": "TinyChat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})

        # each server again on a port its first copy holds (the controller does not exit: uvicorn's failure
        # leaves its heart-beat thread running; it is stopped once its output is complete)
        taken = Run("fastchat-controller-port-taken.log", ["-m", "fastchat.serve.controller", "--host",
                                                           "127.0.0.1", "--port", str(c)], work)
        wait_for(lambda: b"Application shutdown complete" in taken.path.read_bytes(), 120, "the failed bind")
        taken.stop()
        Run("fastchat-api-port-taken.log", ["-m", "fastchat.serve.openai_api_server", "--host", "127.0.0.1",
                                            "--port", str(a), "--controller-address", ctl_url], work).finish()
        Run("fastchat-worker-port-taken.log", worker_argv("TinyChat", w), work).finish()
        for model, name in (("Empty", "empty-model"), ("NoWeights", "no-weights"), ("NoTokenizer", "no-tokenizer"),
                            ("Gone", "missing-folder")):
            Run(f"fastchat-worker-{name}.log", worker_argv(model, free_port()), work).finish()
        # without --load-8bit, Transformers itself looks for the files (its own messages)
        unquantised = [f for f in WORKER_FLAGS if f != "--load-8bit"]
        for model, name in (("NoWeights", "no-weights-unquantised"), ("NoConfig", "no-config-unquantised")):
            Run(f"fastchat-worker-{name}.log", worker_argv(model, free_port(), unquantised), work).finish()
        Run("fastchat-no-such-module.log", ["-m", "fastchat.serve.nope", "--port", str(free_port())], work).finish()
        bare = bare_python()
        Run("fastchat-not-installed.log", ["-m", "fastchat.serve.controller", "--port", str(free_port())], work,
            python=bare).finish()
        for engine in ("vllm", "sglang"):
            Run(f"fastchat-{engine}-worker-no-{engine}.log",
                ["-m", f"fastchat.serve.{engine}_worker", "--port", str(free_port()), "--model-path",
                 str(models / "TinyChat")], work).finish()
        for run in (api, worker, ctl):
            run.stop()
        print("samples written:", *sorted(p.name for p in SAMPLES.glob("fastchat-*.log")), sep="\n  ")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
