"""The demo stack under `qasup up`, once per plan of QAnything's script: which services ran, their
CUDA_VISIBLE_DEVICES (read from the live processes), their start order, the .env the plan wrote, and that every
plan names its services as QAnything's design card does (one unit per service; what changes with the plan is in
conditional drop-ins), so that `qasup restart sanic` works in every plan.

Speed: every check here is a few CLI runs or a whole stack, mostly waiting. The module's first test starts all the
selected checks at once (:func:`runs`) and each test then takes its own result (a failed assertion is raised in
the test it belongs to). The stacks use the demo's fixed ports (8777, 10000, ...): each runs in a network
namespace of its own (:data:`NETNS_BOOT`) where this machine allows one, else they run one after the other."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL = ["-m", "Qwen-7B-Chat", "-s", "7B", "-t", "qwen-7b-chat"]
# The design card's services, plus the distinct programs of the FastChat backends and the default backend's relay:
# every unit there is, and the only names any plan shows.
CARD = {"triton-llm", "triton-embed-rerank", "fastchat-controller", "vllm-worker", "rerank", "ocr", "sanic",
        "fastchat-openai-api", "hf-worker", "sglang-worker", "llm-relay"}
FASTCHAT = {"fastchat-controller", "fastchat-openai-api", "triton-embed-rerank", "rerank", "ocr", "sanic"}

PLANS = {
    "default-1gpu": ([], {"triton-llm", "llm-relay", "rerank", "ocr", "sanic"},
                     {"triton-llm": "0", "ocr": "0"}, {"RUNTIME_BACKEND": "default", "OFFCUT_TOKEN": "0",
                                                       "RERANK_PORT": "10001", "GPUID1": "0", "GPUID2": "0"}),
    "default-2gpu": (["-i", "0,1", "-p", "1"], {"triton-llm", "triton-embed-rerank", "llm-relay", "rerank", "ocr", "sanic"},
                     {"triton-llm": "0", "triton-embed-rerank": "1", "ocr": "1"},
                     {"RUNTIME_BACKEND": "default", "TP": "1", "GPUID1": "0", "GPUID2": "1", "RERANK_PORT": "9001"}),
    "hf": (["-b", "hf", *MODEL], FASTCHAT | {"hf-worker"},
           {"hf-worker": "0", "triton-embed-rerank": "0"},
           {"RUNTIME_BACKEND": "hf", "MODEL_NAME": "Qwen-7B-Chat", "LLM_API_SERVE_PORT": "7802"}),
    "vllm-2gpu": (["-b", "vllm", "-i", "0,1", *MODEL], FASTCHAT | {"vllm-worker"},
                  {"vllm-worker": "0,1", "triton-embed-rerank": "1"},
                  {"RUNTIME_BACKEND": "vllm", "TP": "2", "CONV_TEMPLATE": "qwen-7b-chat"}),
    "sglang": (["-b", "sglang", *MODEL], FASTCHAT | {"sglang-worker"},
               {"sglang-worker": "0"}, {"RUNTIME_BACKEND": "sglang"}),
    "cloud": (["-c", "cloud"], {"triton-embed-rerank", "rerank", "ocr", "sanic"},
              {"triton-embed-rerank": "0", "ocr": "0"}, {"LLM_API": "cloud", "MODEL_SIZE": "0B"}),
}
# More plans, checked by `qasup plan` alone: (flags, the services enabled, the conditional drop-ins applied).
MORE_PLANS = {
    "vllm-1gpu": (["-b", "vllm", *MODEL], FASTCHAT | {"vllm-worker"}),
    "hf-2gpu": (["-b", "hf", "-i", "0,1", "-p", "1", *MODEL], FASTCHAT | {"hf-worker"}),
    "sglang-2gpu": (["-b", "sglang", "-i", "0,1", "-p", "1", *MODEL], FASTCHAT | {"sglang-worker"}),
    "cloud-2gpu": (["-c", "cloud", "-i", "0,1"], {"triton-embed-rerank", "rerank", "ocr", "sanic"}),
}
# The conditional drop-ins (services.d/NAME.d/FILE, the demo's dropins/NAME.d/FILE) of the enabled services that
# apply in a plan; in the others, none applies to an enabled service.
APPLIED = {
    "default-2gpu": {"triton-llm.d/two-gpus.toml", "triton-llm.d/standin_two_gpus.toml"},
    "cloud": {"triton-embed-rerank.d/cloud.toml", "sanic.d/cloud.toml", "sanic.d/standin_cloud.toml"},
    "cloud-2gpu": {"triton-embed-rerank.d/cloud.toml", "sanic.d/cloud.toml", "sanic.d/standin_cloud.toml"},
}


def make_demo(tmp_path: Path) -> Path:
    """A copy of the repository's services.d and examples/ (the demo writes .env and logs beside itself)."""
    shutil.copytree(REPO / "services.d", tmp_path / "services.d")
    shutil.copytree(REPO / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns(".qasup", "logs", ".env", "__pycache__"))
    demo = tmp_path / "examples" / "demo"
    (demo / ".env").write_text("# QAnything settings\nUSER_IP=127.0.0.1\nCUSTOM_KEY_KEPT=yes\n")
    return demo


# Runs ARGV in a new network namespace whose loopback is up (so that several demo stacks can each listen on the
# demo's fixed ports at once). The CLI reaches the daemon through its socket file, which any namespace can open.
NETNS_BOOT = r'''
import ctypes, fcntl, os, socket, struct, sys
if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:   # CLONE_NEWNET
    sys.exit(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]   # SIOCGIFFLAGS
    fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))                             # SIOCSIFFLAGS, IFF_UP
os.execv(sys.argv[1], sys.argv[1:])
'''


def _netns_problem() -> str | None:
    try:
        r = subprocess.run([sys.executable, "-c", NETNS_BOOT, sys.executable, "-c",
                            "import socket; socket.create_server(('127.0.0.1', 8777)).close()"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if r.returncode == 0 else r.stderr.strip() or f"exit {r.returncode}"


def up_argv(demo: Path, *args: str, netns: bool) -> list[str]:
    argv = [sys.executable, "-m", "supervisor", "--config", str(demo / "qasup.toml"), "up", *args]
    return [sys.executable, "-c", NETNS_BOOT, *argv] if netns else argv


def qasup(demo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor", "--config", str(demo / "qasup.toml"), *args],
                          capture_output=True, text=True, timeout=timeout)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def run_demo_plan(demo: Path, plan: str, netns: bool) -> None:
    flags, expected, gpus, env_expected = PLANS[plan]
    planned = json.loads(qasup(demo, "plan", "--json", *flags).stdout)
    assert planned["feasible"], planned["error"]
    requires = {s["name"]: s["requires"] + s["after"] for s in planned["services"] if s["enabled"]}
    gpu_ids = {s["name"]: s["gpu_ids"] for s in planned["services"] if s["enabled"]}
    assert set(requires) == expected

    env = {**os.environ, "STANDIN_LOAD_SECONDS": "0.2", "NO_COLOR": "1"}
    out = open(demo / "up.out", "wb")
    proc = subprocess.Popen(up_argv(demo, *flags, netns=netns), stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        r = qasup(demo, "wait-ready", "--timeout", "60s", timeout=90)
        assert r.returncode == 0, (demo / "up.out").read_text()[-3000:]
        status = json.loads(qasup(demo, "status", "--json").stdout)
        assert {s["name"] for s in status["services"]} == CARD   # --json keeps every service: the card's names
        running = {s["name"]: s for s in status["services"] if s["state"] != "disabled"}
        assert set(running) == expected
        table = qasup(demo, "status")   # the plan's services only, and a line that says how many are hidden
        assert table.returncode == 0, table.stdout + table.stderr
        lines = table.stdout.strip().splitlines()   # stack line, NAME ... header, a row per service, the note
        assert lines[1].split()[0] == "NAME" and {line.split()[0] for line in lines[2:-1]} == expected, table.stdout
        assert len(lines) == len(expected) + 3, table.stdout
        assert lines[-1] == f"({len(CARD) - len(expected)} services disabled by the plan not shown: qasup status --all)"
        assert all(s["state"] == "ready" for s in running.values())
        for name, devices in gpus.items():
            assert environ_of(running[name]["pid"]).get("CUDA_VISIBLE_DEVICES") == devices, name
        for name, ids in gpu_ids.items():   # every service gets exactly the devices the plan gave it
            want = ",".join(map(str, ids)) if ids else None
            assert environ_of(running[name]["pid"]).get("CUDA_VISIBLE_DEVICES") == want, name
        # start order: nobody started before what it waits for was ready
        events = [json.loads(line) for line in (demo / ".qasup" / "events.jsonl").read_text().splitlines()]
        # the first move into each state (a message while ready, such as a warn rule's, is a ready -> ready event)
        moves = [e for e in events if "service" in e and e.get("prev") != e["state"]]
        started, ready = ({e["service"]: e["ts"] for e in reversed(moves) if e["state"] == state}
                          for state in ("starting", "ready"))
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
        # the same name in every plan: `qasup restart sanic` restarts QAnything's API (a new process, ready again)
        old = running["sanic"]["pid"]
        r = qasup(demo, "restart", "sanic")
        assert (r.returncode, r.stdout.strip()) == (0, "sanic: restarted"), r.stdout + r.stderr
        assert qasup(demo, "wait-ready", "sanic", "--timeout", "30s", timeout=60).returncode == 0
        after = {s["name"]: s for s in json.loads(qasup(demo, "status", "--json").stdout)["services"]}
        assert after["sanic"]["state"] == "ready" and after["sanic"]["pid"] not in (None, old)
        assert not Path(f"/proc/{old}").exists(), "the old sanic is still there"
        mode = "online" if "cloud" in plan else "local"   # sanic.d/cloud.toml applied again for the new instance
        assert Path(f"/proc/{after['sanic']['pid']}/cmdline").read_bytes().split(b"\0")[-2] == mode.encode()
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


def run_demo_oom(demo: Path, netns: bool) -> None:
    env = {**os.environ, "STANDIN_LOAD_SECONDS": "0.2", "STANDIN_FAIL": "vllm-worker=oom"}
    t0 = time.monotonic()
    r = subprocess.run(up_argv(demo, "-b", "vllm", *MODEL, netns=netns), capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 1
    assert "vllm-worker: error rule" in r.stdout and "ran out of memory" in r.stdout
    assert "aborting the stack" in r.stdout
    assert time.monotonic() - t0 < 30


ALL_PLANS = {name: (v[0], v[1]) for name, v in {**PLANS, **MORE_PLANS}.items()}


def run_plan_json(plan: str) -> None:
    """`qasup plan --json` of the demo: every service by the card's names, the plan's own enabled; the conditional
    drop-ins of the enabled services that applied (and only those), with the facts that matched."""
    flags, expected = ALL_PLANS[plan]
    r = subprocess.run([sys.executable, "-m", "supervisor", "--config", str(REPO / "examples/demo/qasup.toml"),
                        "plan", "--json", *flags], capture_output=True, text=True, timeout=60)
    planned = json.loads(r.stdout)
    assert planned["feasible"], planned["error"]
    assert [s["name"] for s in planned["services"]] == sorted(CARD)
    assert {s["name"] for s in planned["services"] if s["enabled"]} == expected
    applied = {f"{Path(d['file']).parent.name}/{Path(d['file']).name}": d["reason"]
               for s in planned["services"] if s["enabled"] for d in s["dropins"] if d["applied"]}
    assert set(applied) == APPLIED.get(plan, set()), applied
    assert all(d["reason"] for s in planned["services"] for d in s["dropins"])
    off = {s["name"]: s["reason"] for s in planned["services"] if not s["enabled"]}
    if plan == "default-1gpu":   # triton-llm serves embed/rerank: the separate Triton is off, and the plan says why
        assert off["triton-embed-rerank"] == ("enabled = false in triton-embed-rerank.d/default-one-gpu.toml "
                                              "(llm_api is local, runtime_backend is default, same_gpu is true)")
        assert next(s for s in planned["services"] if s["name"] == "triton-llm")["vram_mib"] == 13000


def run_real_check(plan: str) -> None:
    """`qasup check` passes on the repository's own services.d (the real commands) for every plan."""
    flags = ALL_PLANS[plan][0]
    gpus = json.dumps([{"index": i, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564,
                        "compute_capability": "8.9"} for i in (0, 1)])
    r = subprocess.run([sys.executable, "-m", "supervisor", "--config", str(REPO / "qasup.toml"), "check",
                        "--gpus", gpus, *flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout and "infeasible" not in r.stderr


# ------------------------------------------------------------------------------------------ the tests

STACK_WORKERS = 4   # stacks at once, each in its own network namespace (2 cores: most of a stack's time is waiting)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Every selected check of this module, started at once: ``(test name, plan) -> Future`` (None when it passed)."""
    selected = [(item.originalname, item.callspec.params.get("plan") if hasattr(item, "callspec") else None)
                for item in request.session.items if item.module is request.module]
    netns = _netns_problem() is None
    stacks = ThreadPoolExecutor(max_workers=STACK_WORKERS if netns else 1)   # the same ports without namespaces
    clis = ThreadPoolExecutor(max_workers=4)
    futures: dict[tuple[str, str | None], Future[None]] = {}
    for name, plan in selected:
        if name == "test_demo_plan":
            folder = tmp_path_factory.mktemp(f"demo-{plan}")
            futures[name, plan] = stacks.submit(lambda f=folder, p=plan: run_demo_plan(make_demo(f), str(p), netns))
        elif name == "test_demo_oom_rule_aborts_the_stack":
            folder = tmp_path_factory.mktemp("demo-oom")
            futures[name, plan] = stacks.submit(lambda f=folder: run_demo_oom(make_demo(f), netns))
        else:
            run: Callable[[str], None] = {
                "test_every_plan_shows_the_card_names_and_which_drop_ins_applied": run_plan_json,
                "test_real_units_check_for_every_plan": run_real_check}[name]
            futures[name, plan] = clis.submit(run, str(plan))
    try:
        yield futures
    finally:
        stacks.shutdown(wait=True)
        clis.shutdown(wait=True)


@pytest.mark.parametrize("plan", list(PLANS))
def test_demo_plan(runs, plan):
    runs["test_demo_plan", plan].result()


def test_demo_oom_rule_aborts_the_stack(runs):
    runs["test_demo_oom_rule_aborts_the_stack", None].result()


@pytest.mark.parametrize("plan", list(ALL_PLANS))
def test_every_plan_shows_the_card_names_and_which_drop_ins_applied(runs, plan):
    runs["test_every_plan_shows_the_card_names_and_which_drop_ins_applied", plan].result()


@pytest.mark.parametrize("plan", list(ALL_PLANS))
def test_real_units_check_for_every_plan(runs, plan):
    runs["test_real_units_check_for_every_plan", plan].result()
