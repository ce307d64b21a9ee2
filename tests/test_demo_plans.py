"""The demo stack under `qasup up`, once per plan of QAnything's script: which services ran, their
CUDA_VISIBLE_DEVICES (read from the live processes), their start order, and the .env the plan wrote."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL = ["-m", "Qwen-7B-Chat", "-s", "7B", "-t", "qwen-7b-chat"]

PLANS = {
    "default-1gpu": ([], {"triton", "llm-relay", "rerank", "ocr", "sanic"},
                     {"triton": "0", "ocr": "0"}, {"RUNTIME_BACKEND": "default", "OFFCUT_TOKEN": "0",
                                                   "RERANK_PORT": "10001", "GPUID1": "0", "GPUID2": "0"}),
    "default-2gpu": (["-i", "0,1", "-p", "1"], {"triton-llm", "triton-embed-rerank", "llm-relay", "rerank", "ocr", "sanic"},
                     {"triton-llm": "0", "triton-embed-rerank": "1", "ocr": "1"},
                     {"RUNTIME_BACKEND": "default", "TP": "1", "GPUID1": "0", "GPUID2": "1", "RERANK_PORT": "9001"}),
    "hf": (["-b", "hf", *MODEL], {"triton-embed-rerank-1gpu", "fastchat-controller", "fastchat-openai-api",
                                  "hf-worker", "rerank", "ocr", "sanic"},
           {"hf-worker": "0"}, {"RUNTIME_BACKEND": "hf", "MODEL_NAME": "Qwen-7B-Chat", "LLM_API_SERVE_PORT": "7802"}),
    "vllm-2gpu": (["-b", "vllm", "-i", "0,1", *MODEL],
                  {"triton-embed-rerank", "fastchat-controller", "fastchat-openai-api", "vllm-worker", "rerank",
                   "ocr", "sanic"},
                  {"vllm-worker": "0,1", "triton-embed-rerank": "1"},
                  {"RUNTIME_BACKEND": "vllm", "TP": "2", "CONV_TEMPLATE": "qwen-7b-chat"}),
    "sglang": (["-b", "sglang", *MODEL], {"triton-embed-rerank-1gpu", "fastchat-controller", "fastchat-openai-api",
                                          "sglang-worker", "rerank", "ocr", "sanic"},
               {"sglang-worker": "0"}, {"RUNTIME_BACKEND": "sglang"}),
    "cloud": (["-c", "cloud"], {"triton-embed-rerank-cloud", "rerank", "ocr", "sanic-cloud"},
              {}, {"LLM_API": "cloud", "MODEL_SIZE": "0B"}),
}


@pytest.fixture
def demo(tmp_path):
    """A copy of the repository's services.d and examples/ (the demo writes .env and logs beside itself)."""
    shutil.copytree(REPO / "services.d", tmp_path / "services.d")
    shutil.copytree(REPO / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns(".qasup", "logs", ".env", "__pycache__"))
    demo = tmp_path / "examples" / "demo"
    (demo / ".env").write_text("# QAnything settings\nUSER_IP=127.0.0.1\nCUSTOM_KEY_KEPT=yes\n")
    return demo


def qasup(demo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor", "--config", str(demo / "qasup.toml"), *args],
                          capture_output=True, text=True, timeout=timeout)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.parametrize("plan", list(PLANS))
def test_demo_plan(demo, plan):
    flags, expected, gpus, env_expected = PLANS[plan]
    planned = json.loads(qasup(demo, "plan", "--json", *flags).stdout)
    assert planned["feasible"], planned["error"]
    requires = {s["name"]: s["requires"] + s["after"] for s in planned["services"] if s["enabled"]}
    gpu_ids = {s["name"]: s["gpu_ids"] for s in planned["services"] if s["enabled"]}
    assert set(requires) == expected

    env = {**os.environ, "STANDIN_LOAD_SECONDS": "0.2", "NO_COLOR": "1"}
    out = open(demo / "up.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "--config", str(demo / "qasup.toml"), "up",
                             *flags], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        r = qasup(demo, "wait-ready", "--timeout", "60s", timeout=90)
        assert r.returncode == 0, (demo / "up.out").read_text()[-3000:]
        status = json.loads(qasup(demo, "status", "--json").stdout)
        running = {s["name"]: s for s in status["services"] if s["state"] != "disabled"}
        assert set(running) == expected
        assert all(s["state"] == "ready" for s in running.values())
        for name, devices in gpus.items():
            assert environ_of(running[name]["pid"]).get("CUDA_VISIBLE_DEVICES") == devices, name
        for name, ids in gpu_ids.items():   # every service gets exactly the devices the plan gave it
            want = ",".join(map(str, ids)) if ids else None
            assert environ_of(running[name]["pid"]).get("CUDA_VISIBLE_DEVICES") == want, name
        # start order: nobody started before what it waits for was ready
        events = [json.loads(line) for line in (demo / ".qasup" / "events.jsonl").read_text().splitlines()]
        started = {e["service"]: e["ts"] for e in events if e.get("state") == "starting" and "service" in e}
        ready = {e["service"]: e["ts"] for e in events if e.get("state") == "ready" and "service" in e}
        assert set(started) == expected
        for name, deps in requires.items():
            for d in deps:
                assert ready[d] <= started[name], f"{name} started before {d} was ready"
        # the .env the plan wrote: its values, with the user's own lines kept
        dotenv = (demo / ".env").read_text()
        assert dotenv.startswith("# QAnything settings\nUSER_IP=127.0.0.1\nCUSTOM_KEY_KEPT=yes\n")
        values = dict(line.split("=", 1) for line in dotenv.splitlines() if "=" in line and not line.startswith("#"))
        for key, value in env_expected.items():
            assert values.get(key, "").strip("'\"") == value, key
        banner = "Please visit the front-end service at http://127.0.0.1:8777/qanything/"
        assert banner in (demo / "up.out").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            out.close()
    assert code == 0


def test_demo_oom_rule_aborts_the_stack(demo):
    env = {**os.environ, "STANDIN_LOAD_SECONDS": "0.2", "STANDIN_FAIL": "vllm-worker=oom"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "supervisor", "--config", str(demo / "qasup.toml"), "up", "-b", "vllm",
                        *MODEL], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1
    assert "vllm-worker: error rule" in r.stdout and "ran out of memory" in r.stdout
    assert "aborting the stack" in r.stdout
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("plan", list(PLANS))
def test_real_units_check_for_every_plan(plan):
    """`qasup check` passes on the repository's own services.d (the real commands) for every plan."""
    flags = PLANS[plan][0]
    gpus = json.dumps([{"index": i, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564,
                        "compute_capability": "8.9"} for i in (0, 1)])
    r = subprocess.run([sys.executable, "-m", "supervisor", "--config", str(REPO / "qasup.toml"), "check",
                        "--gpus", gpus, *flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout and "infeasible" not in r.stderr
