"""FastChat 0.2.36 for real under the shipped units: controller, OpenAI API server and a Transformers model worker
serving a tiny random-weight Llama on the CPU (see fcstack.py for the only things changed: paths, hosts, ports,
``--device cpu``, and the controller's install step).

What it shows:
* readiness comes from the real ``POST /list_models`` (the worker is ready once the controller lists its model),
  and one chat completion goes API -> controller -> worker and back;
* ``qasup restart fastchat-controller``: the new controller has forgotten the worker, and ``restart_with``
  restarts the worker once the new controller is ready, so the model is listed again within seconds, where
  FastChat alone needs up to its 45 s heart beat;
* ``[live]`` on its own (restart_with switched off): the worker the controller forgot fails its liveness rounds
  and is restarted, registered again;
* the error rules fire on FastChat's real failure output: the controller's port taken (FastChat's controller
  then hangs on: only the rule ends it), a model folder without weights, a missing module; an empty model folder
  is refused before anything starts (requires_paths asks for its config.json);
* nothing is left behind after any of it.

Run with tests/integration/run.sh, or: ``bash tests/integration/setup_fastchat.sh`` then
``QASUP_INTEGRATION=1 .venv/bin/pytest -q tests/integration/fastchat``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ..kit import Daemon, Work, poll
from .fcstack import FC_DIR, LOAD_TIMEOUT, MODEL, fastchat_stack, log_of, need_fastchat, write_model

HEARTBEAT = 45.0   # FastChat's WORKER_HEART_BEAT_INTERVAL: how long a forgotten worker takes to register alone


@pytest.fixture(scope="module")
def python() -> Path:
    return need_fastchat()


@pytest.fixture(scope="module")
def models(python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store (the image's /model_repos/CustomLLM) holding the tiny model, written once per module."""
    store = tmp_path_factory.mktemp("CustomLLM")
    write_model(python, store)
    return store


def post(url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def listed(port: int) -> list[str]:
    try:
        return post(f"http://127.0.0.1:{port}/list_models", timeout=5)["models"]
    except (OSError, ValueError, KeyError):
        return []


def events_of(d: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("service") == name]


def ready_pids(d: Daemon, name: str) -> list[int]:
    return [e["pid"] for e in events_of(d, name) if e.get("state") == "ready" and "pid" in e]


def chat(api_port: int) -> dict[str, Any]:
    return post(f"http://127.0.0.1:{api_port}/v1/chat/completions",
                {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}, timeout=120)


def stop_and_check(work: Work, d: Daemon, ports: list[int]) -> None:
    assert d.terminate(timeout=120) == 0, d.out
    work.nothing_left(timeout=10, ports=ports, what="after the shutdown")


# ------------------------------------------------------------------------------------------ a working stack

def test_ready_by_list_models_chat_through_the_api_and_controller_restart(work: Work, python: Path, models: Path):
    d, ports = fastchat_stack(work, python, models)
    d.start()
    d.wait_ready(timeout=LOAD_TIMEOUT)
    # ready means registered: the real controller lists the model, and the worker became ready after it
    assert listed(ports.controller) == [MODEL]
    assert d.service("hf-worker")["state"] == "ready"
    ctl_ready = min(e["ts"] for e in events_of(d, "fastchat-controller") if e.get("state") == "ready")
    worker_ready = min(e["ts"] for e in events_of(d, "hf-worker") if e.get("state") == "ready")
    assert worker_ready > ctl_ready

    # a chat completion through the API server, the controller and the worker
    answer = chat(ports.api)
    assert answer["model"] == MODEL and answer["object"] == "chat.completion"
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] > 0
    assert b'"POST /worker_generate HTTP/1.1" 200' in log_of(work, "hf-worker").read_bytes()
    # FastChat writes its own controller.log into its cwd (the script's `cd fastchat_logs`), beside qasup's file
    assert (work.stack / FC_DIR / "controller.log").exists()

    # restart the controller: the new one starts with no worker; restart_with brings the worker back at once
    old_worker = d.service("hf-worker")["pid"]
    old_ctl = d.service("fastchat-controller")["pid"]
    d.ok("restart", "fastchat-controller")
    t0 = time.monotonic()
    assert d.service("fastchat-controller")["pid"] != old_ctl
    poll(lambda: listed(ports.controller) == [MODEL], LOAD_TIMEOUT, "the worker registered with the new controller")
    took = time.monotonic() - t0
    d.wait_ready("hf-worker", timeout=LOAD_TIMEOUT)
    new_worker = d.service("hf-worker")["pid"]
    assert new_worker != old_worker, "the worker was not restarted with the controller"
    assert any("restart with fastchat-controller" in e.get("message", "") for e in events_of(d, "hf-worker")), \
        events_of(d, "hf-worker")
    assert ready_pids(d, "hf-worker")[-1] == new_worker
    print(f"worker registered again {took:.1f} s after `qasup restart fastchat-controller` returned")
    # faster than FastChat's own re-registration at the next heart beat, on a loaded 2-core machine included
    assert took < HEARTBEAT, f"{took:.1f} s"
    assert chat(ports.api)["usage"]["completion_tokens"] > 0
    stop_and_check(work, d, [ports.controller, ports.worker, ports.api])


def test_liveness_restarts_a_worker_the_controller_forgot(work: Work, python: Path, models: Path):
    """restart_with off, [live] faster (1 s rounds, 2 failures): a controller restart leaves the worker forgotten
    (the issue's 45 s of an empty /list_models while the worker is 'ready'); the liveness rounds fail (while the
    controller restarts, and after it: the new one does not list the model) and the worker is restarted."""
    d, ports = fastchat_stack(work, python, models, units=("fastchat-controller", "hf-worker"), extra={
        "hf-worker": """
            restart_with = []

            [live]
            interval = "1s"
            failures = 2
        """})
    d.start()
    d.wait_ready(timeout=LOAD_TIMEOUT)
    old_worker = d.service("hf-worker")["pid"]
    d.ok("restart", "fastchat-controller")
    assert listed(ports.controller) == [], "the new controller already knows the worker: nothing to show"
    poll(lambda: listed(ports.controller) == [MODEL], LOAD_TIMEOUT, "the worker registered again")
    d.wait_ready("hf-worker", timeout=LOAD_TIMEOUT)
    svc = d.service("hf-worker")
    assert svc["pid"] != old_worker
    messages = [e.get("message", "") for e in events_of(d, "hf-worker")]
    assert any("liveness: " in m for m in messages), messages
    assert "liveness" in d.out, d.out
    stop_and_check(work, d, [ports.controller, ports.worker])


# ------------------------------------------------------------------------------------------ failures

def test_port_taken_aborts_with_the_rules_message(work: Work, python: Path, models: Path):
    d, ports = fastchat_stack(work, python, models, units=("fastchat-controller",))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports.controller))
        holder.listen()
        d.start()
        rc = d.wait(timeout=LOAD_TIMEOUT)
    assert rc == 1, d.out
    assert "port 7800 (FastChat controller) is taken by another process" in d.out
    log = log_of(work, "fastchat-controller").read_bytes()
    assert b"| ERROR | stderr | ERROR:    [Errno 98] error while attempting to bind on address" in log
    assert b"[qasup]" not in log   # the log holds the service's bytes only
    work.nothing_left(timeout=10, what="after the abort")


def test_model_folder_without_weights_aborts_with_the_model_files_message(work: Work, python: Path, models: Path):
    broken = work.dir / "CustomLLM"
    (broken / MODEL).mkdir(parents=True)
    for f in (models / MODEL).glob("*.json"):
        shutil.copy(f, broken / MODEL)
    d, ports = fastchat_stack(work, python, broken, units=("fastchat-controller", "hf-worker"))
    d.start()
    rc = d.wait(timeout=LOAD_TIMEOUT)
    assert rc == 1, d.out
    assert f"the files of model {MODEL} are missing or incomplete" in d.out
    assert b"Cannot find any model weight files" in log_of(work, "hf-worker").read_bytes()
    work.nothing_left(timeout=10, ports=[ports.controller, ports.worker], what="after the abort")


def test_empty_model_folder_is_refused_before_anything_starts(work: Work, python: Path):
    empty = work.dir / "CustomLLM"
    (empty / MODEL).mkdir(parents=True)
    d, _ports = fastchat_stack(work, python, empty)
    d.start()
    rc = d.wait(timeout=60)
    assert rc == 1, d.out
    assert f"{empty / MODEL / 'config.json'} (required by hf-worker)" in d.out, d.out
    assert not log_of(work, "fastchat-controller").exists(), "a service started"
    work.nothing_left(timeout=5, what="after the refusal")


def test_missing_module_aborts(work: Work, python: Path, models: Path):
    """``-m fastchat.serve.nope`` (a module that does not exist): the missing-module rule, not a restart loop."""
    d, _ports = fastchat_stack(work, python, models, units=("fastchat-controller",), extra={
        "fastchat-controller": """
            command = ["python3", "-m", "fastchat.serve.nope"]
        """})
    d.start()
    assert d.wait(timeout=60) == 1, d.out
    assert "a Python module fastchat-controller needs is missing" in d.out, d.out
    assert b"No module named fastchat.serve.nope" in log_of(work, "fastchat-controller").read_bytes()
    work.nothing_left(timeout=5, what="after the abort")


def test_image_without_fastchat_aborts(work: Work, python: Path, models: Path):
    """``python3`` on PATH without FastChat (the image's install step did not run): the same rule."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != str(python.parent))
    bare = shutil.which("python3", path=path)
    if bare is None:
        pytest.skip("no python3 on PATH outside the FastChat venv")
    d, _ports = fastchat_stack(work, python, models, units=("fastchat-controller",), env={"PATH": path})
    d.start()
    assert d.wait(timeout=60) == 1, d.out
    log = log_of(work, "fastchat-controller").read_bytes()
    if b"No module named 'fastchat'" not in log:
        pytest.skip(f"{bare} has fastchat installed")
    assert "a Python module fastchat-controller needs is missing" in d.out, d.out
    work.nothing_left(timeout=5, what="after the abort")
