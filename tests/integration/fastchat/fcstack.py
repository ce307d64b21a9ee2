"""The shipped FastChat units (services.d/fastchat-controller.toml, fastchat-openai-api.toml, hf-worker.toml) in
a test stack, with only paths, hosts and ports changed.

Each unit file is copied byte for byte into the stack's ``services.d/``; a drop-in ``services.d/NAME.d/
10-integration.toml``, computed from the shipped unit, changes:

* ports 7800/7801/7802 to free ones and host ``0.0.0.0`` to ``127.0.0.1``, in ``command``, ``[ready]`` and
  ``[live]`` (several helpers share this machine: fixed ports would collide);
* ``/model_repos/CustomLLM`` to the test's model folder, in ``command`` and ``requires_paths``;
* the worker gets ``--device cpu`` (FastChat defaults to CUDA; this machine has no GPU). Every other flag stays,
  ``--load-8bit --num-gpus ${TP} --dtype bfloat16 --conv-template ${CONV_TEMPLATE}`` included: FastChat runs its
  own 8-bit compression on the CPU;
* the controller's ``[prepare]`` command (``pip install -e third_party/FastChat``) only prints: there is no
  FastChat checkout to install, the venv already has fschat 0.2.36. ``when_changed`` stays.

``python3`` in the commands is the FastChat venv's: its ``bin/`` comes first on qasup's PATH. Everything else,
``[ready]``, ``[live]``, ``restart_with``, ``[restart]``, ``[stop]``, the error rules, log files and working
folders, is the shipped unit's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from ..kit import ONE_4090, REPO, Daemon, Work, free_port

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("QASUP_FASTCHAT_VENV", HERE.parent / ".venv-fastchat"))
SETUP = "bash tests/integration/setup_fastchat.sh"
UNITS = ("fastchat-controller", "fastchat-openai-api", "hf-worker")
MODEL = "TinyChat"
CONV_TEMPLATE = "qwen-7b-chat"
FC_DIR = "qanything_local/logs/debug_logs/fastchat_logs"   # the units' cwd and log folder
SHIPPED_PORTS = {"7800": "controller", "7801": "worker", "7802": "api"}
LOAD_TIMEOUT = 240.0   # a worker loading the tiny model on a loaded 2-core machine: ~15 s, up to a minute seen


def need_fastchat() -> Path:
    """The FastChat venv's python; skip (fail under QASUP_INTEGRATION_REQUIRE=1) when the venv is missing."""
    python = VENV / "bin" / "python"
    if not python.exists():
        why = f"the FastChat venv {VENV} is missing: run {SETUP}"
        if os.environ.get("QASUP_INTEGRATION_REQUIRE") == "1":
            pytest.fail(why + " (run.sh should have made it)")
        pytest.skip(why)
    return python


def write_model(python: Path, folder: Path) -> Path:
    """The tiny random-weight Llama (tinymodel.py) in ``folder/MODEL``; returns that folder."""
    out = folder / MODEL
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([str(python), str(HERE / "tinymodel.py"), str(out)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"tinymodel.py failed:\n{r.stdout}\n{r.stderr}"
    return out


class Ports:
    def __init__(self) -> None:
        self.controller, self.worker, self.api = free_port(), free_port(), free_port()

    def by_shipped(self) -> dict[str, str]:
        return {shipped: str(getattr(self, role)) for shipped, role in SHIPPED_PORTS.items()}


_PORT = re.compile(r"(?<![0-9])(78\d\d)(?![0-9])")


def rewrite(value: Any, ports: Ports, models: Path) -> Any:
    """``value`` (a string, or lists/tables of them) with the shipped ports, host and model folder replaced."""
    if isinstance(value, str):
        out = _PORT.sub(lambda m: ports.by_shipped().get(m.group(1), m.group(1)), value)
        return out.replace("0.0.0.0", "127.0.0.1").replace("/model_repos/CustomLLM", str(models))
    if isinstance(value, list):
        return [rewrite(v, ports, models) for v in value]
    if isinstance(value, dict):
        return {k: rewrite(v, ports, models) for k, v in value.items()}
    return value


def dropin_for(unit: Mapping[str, Any], ports: Ports, models: Path, extra_args: Iterable[str] = ()) -> dict[str, Any]:
    """The drop-in's tables: only what changes. Top-level keys replaced whole (arrays), tables key by key."""
    out: dict[str, Any] = {}
    command = rewrite(unit["command"], ports, models) + list(extra_args)
    if command != unit["command"]:
        out["command"] = command
    if "requires_paths" in unit and (rp := rewrite(unit["requires_paths"], ports, models)) != unit["requires_paths"]:
        out["requires_paths"] = rp
    for table in ("ready", "live"):
        changed = {k: rewrite(v, ports, models) for k, v in unit.get(table, {}).items()
                   if rewrite(v, ports, models) != v}
        if changed:
            out[table] = changed
    return out


def to_toml(tables: Mapping[str, Any], comment: str) -> str:
    """Enough TOML for a drop-in: strings, numbers, lists and one level of (inline) tables; strings as JSON
    strings, which TOML reads as basic strings."""
    def val(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return str(v)
    top = [f"{k} = {val(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    subs = [f"\n[{k}]\n" + "\n".join(f"{kk} = {val(vv)}" for kk, vv in v.items())
            for k, v in tables.items() if isinstance(v, dict)]
    return f"# {comment}\n" + "\n".join(top) + "\n" + "\n".join(subs) + "\n"


def shipped(name: str) -> dict[str, Any]:
    return tomllib.loads((REPO / "services.d" / f"{name}.toml").read_text())


def fastchat_stack(work: Work, python: Path, models: Path, *, units: Iterable[str] = UNITS,
                   extra: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> tuple[Daemon, Ports]:
    """The shipped units in ``work``'s stack with their integration drop-ins (see the module's doc), a plan for
    ``-b hf -m TinyChat`` on a declared RTX 4090, and a daemon (not started). ``extra`` maps a unit name to
    more drop-in TOML (``20-test.toml``), for a test that changes one thing on purpose."""
    ports = Ports()
    work.stack_file(f"""
        [stack]
        name = "it-fastchat"
        stop_budget = "90s"
        echo = false

        [plan]
        llm_api = "local"
        runtime_backend = "hf"
        device_id = "0"
        model_name = "{MODEL}"
        model_size = "7B"
        conv_template = "{CONV_TEMPLATE}"
    """)
    (work.stack / FC_DIR).mkdir(parents=True, exist_ok=True)
    # the controller's when_changed input (the FastChat checkout the real image installs from)
    checkout = work.stack / "qanything_local" / "third_party" / "FastChat"
    checkout.mkdir(parents=True, exist_ok=True)
    (checkout / "README.md").write_text("stands for QAnything's third_party/FastChat checkout\n")
    for name in units:
        work.add_unit(name, REPO / "services.d" / f"{name}.toml")
        unit = shipped(name)
        tables = dropin_for(unit, ports, models, ["--device", "cpu"] if name == "hf-worker" else ())
        if "prepare" in unit:
            tables["prepare"] = {"command": ["python3", "-c", "print('prepare: no FastChat checkout to install "
                                             "in this test; the venv has fschat 0.2.36')"]}
        work.write(f"services.d/{name}.d/10-integration.toml",
                   to_toml(tables, "integration test: paths, hosts and ports only (tests/integration/fastchat)"))
        if extra and name in extra:
            work.write(f"services.d/{name}.d/20-test.toml", extra[name])
    path = f"{python.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    daemon_env = {"PATH": path, "QASUP_GPUS": ONE_4090, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                  # two cores shared by the whole suite: one thread per torch process is plenty for this model
                  "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                  **(env or {})}
    return work.daemon(daemon_env), ports


def log_of(work: Work, name: str) -> Path:
    """The service's log file, as the shipped unit names it."""
    return work.stack / shipped(name)["log"]["file"]
