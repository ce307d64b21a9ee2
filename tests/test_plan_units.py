"""How the plan treats units: ``enabled``/``[when]``, ``provides``, ``requires`` on disabled units, GPU roles
and the ordering of loaders sharing a GPU. Mostly in-process; ``qasup plan --json`` as a subprocess for the
user's view.
"""

from __future__ import annotations

import json

import pytest

from supervisor.config.loader import load_config
from supervisor.errors import Problems
from supervisor.plan.build import make_plan
from supervisor.plan.gpu import GpuInfo

from conftest import make_stack, qasup

RTX4090 = {"name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564, "memory_free_mib": 24000,
           "compute_capability": "8.9"}
ONE_GPU = [GpuInfo(index=0, **RTX4090)]
TWO_GPUS = [GpuInfo(index=0, **RTX4090), GpuInfo(index=1, **RTX4090)]

QA_UNITS = {
    "vllm": 'command = ["x"]\nprovides = ["llm"]\ngpu = "llm"\nvram_mib = 9000\n[when]\nruntime_backend = ["vllm"]\n',
    "hf": 'command = ["x"]\nprovides = ["llm"]\ngpu = "llm"\nvram_mib = 8000\n[when]\nruntime_backend = ["hf"]\n',
    "embed": 'command = ["x"]\ngpu = "embed"\nvram_mib = 3000\n',
    "ocr": 'command = ["x"]\ngpu = "embed"\nvram_mib = 1000\n[when]\nocr_use_gpu = true\n',
    "api": 'command = ["serve", "${RUNTIME_BACKEND}", "${CUDA_VISIBLE_DEVICES:-cpu}"]\n'
           'requires = ["llm", "embed"]\nafter = ["ocr"]\n',
}


def plan_of(tmp_path, units, stack_toml=None, overrides=None, gpus=()):
    config = load_config(cwd=make_stack(tmp_path, units, stack_toml))
    probs = Problems()
    plan = make_plan(config, overrides or {}, list(gpus), probs, environ={}, check_paths=False)
    return plan, [f"{p.file.rsplit('/', 1)[-1]}: {p.key}: {p.message}" for p in probs.items]


@pytest.mark.parametrize("backend, llm", [("vllm", "vllm"), ("hf", "hf")])
def test_when_picks_the_provider(tmp_path, backend, llm):
    plan, found = plan_of(tmp_path, QA_UNITS, overrides={"runtime_backend": backend, "model_name": "m",
                                                           "model_size": "7B"}, gpus=ONE_GPU)
    assert found == [] and plan.feasible, plan.error
    other = "hf" if llm == "vllm" else "vllm"
    assert plan.services[llm].enabled and plan.services[llm].reason == f"runtime_backend is {backend}"
    assert not plan.services[other].enabled
    assert plan.services[other].reason == f"runtime_backend is {backend}, not {other}"
    assert plan.graph.requires["api"] == ("embed", llm)
    assert plan.resolved["api"].argv == ("serve", backend, "cpu")


def test_gpu_loaders_sharing_a_gpu_start_largest_first(tmp_path):
    plan, found = plan_of(tmp_path, QA_UNITS, overrides={"runtime_backend": "vllm", "model_name": "m",
                                                           "model_size": "7B"}, gpus=ONE_GPU)
    assert found == []
    assert plan.gpu_edges == (("vllm", "embed"), ("embed", "ocr"))
    assert plan.graph.waves() == [["vllm"], ["embed"], ["ocr"], ["api"]]
    assert plan.services["ocr"].env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}
    assert plan.resolved["embed"].env["CUDA_VISIBLE_DEVICES"] == "0"


def test_gpu_roles_on_two_gpus_do_not_order_across_gpus(tmp_path):
    plan, found = plan_of(tmp_path, QA_UNITS, overrides={"runtime_backend": "vllm", "model_name": "m",
                                                           "model_size": "7B", "device_id": "0,1"}, gpus=TWO_GPUS)
    assert found == [] and plan.feasible, plan.error
    assert plan.services["vllm"].gpu_ids == (0,) and plan.services["embed"].gpu_ids == (1,)
    assert plan.gpu_edges == (("embed", "ocr"),)
    assert plan.graph.waves() == [["embed", "vllm"], ["ocr"], ["api"]]


def test_gpu_order_never_goes_against_a_dependency(tmp_path):
    """The small loader is required by the large one: it must start first, whatever its size."""
    units = {"big": 'command = ["x"]\ngpu = "llm"\nvram_mib = 9000\nrequires = ["small"]\n',
             "small": 'command = ["x"]\ngpu = "llm"\nvram_mib = 100\n',
             "mid": 'command = ["x"]\ngpu = "llm"\nvram_mib = 5000\n'}
    plan, found = plan_of(tmp_path, units, gpus=ONE_GPU, overrides={"model_size": "7B"})
    assert found == []
    order = plan.graph.order()
    assert order.index("small") < order.index("big")
    assert plan.graph.cycles() == []
    for a, b in plan.gpu_edges:
        assert order.index(a) < order.index(b)
    assert len(plan.graph.waves()) == 3   # the three loaders start one after another


def test_not_enough_free_memory_is_infeasible_not_a_config_error(tmp_path):
    units = {"a": 'command = ["x"]\ngpu = "llm"\nvram_mib = 20000\n',
             "b": 'command = ["x"]\ngpu = "llm"\nvram_mib = 8000\n'}
    plan, found = plan_of(tmp_path, units, gpus=ONE_GPU, overrides={"model_size": "7B"})
    assert found == []
    assert not plan.feasible and "28000 MiB" in plan.error and "24000 MiB free" in plan.error


def test_requires_on_a_unit_disabled_by_when_names_both(tmp_path):
    units = {"api": 'command = ["x"]\nrequires = ["llm"]\n', "vllm": QA_UNITS["vllm"]}
    plan, found = plan_of(tmp_path, units, overrides={"runtime_backend": "hf", "model_name": "m",
                                                        "model_size": "7B"}, gpus=ONE_GPU)
    assert found == ["api.toml: requires: requires 'llm', but it is disabled in this plan: vllm (runtime_backend "
                     "is hf, not vllm); use `after` for an optional dependency"]


def test_two_enabled_providers_are_an_error_but_disabled_ones_are_not(tmp_path):
    units = {"a": 'command = ["x"]\nprovides = ["llm"]\n', "b": 'command = ["x"]\nprovides = ["llm"]\n',
             "c": 'command = ["x"]\nprovides = ["llm"]\nenabled = false\n'}
    _, found = plan_of(tmp_path, units)
    assert sorted(f.split(":")[0] for f in found) == ["a.toml", "b.toml"]
    assert all("'llm' is provided by 2 enabled units (a, b)" in f for f in found)
    units["b"] += "enabled = false\n"
    plan, found = plan_of(tmp_path, units)
    assert found == [] and plan.enabled == ["a"]


def test_when_lists_and_tensor_parallel(tmp_path):
    units = {"tp": 'command = ["x"]\n[when]\ntensor_parallel = [2, 4]\nllm_api = "local"\n',
             "single": 'command = ["x"]\n[when]\ntensor_parallel = 1\n'}
    plan, found = plan_of(tmp_path, units, overrides={"runtime_backend": "vllm", "model_name": "m",
                                                        "model_size": "7B", "device_id": "0,1"}, gpus=TWO_GPUS)
    assert found == []
    assert plan.services["tp"].enabled and plan.services["tp"].reason == "tensor_parallel is 2, llm_api is local"
    assert not plan.services["single"].enabled


def test_stacks_without_gpu_or_when_skip_the_qanything_rules(tmp_path):
    plan, found = plan_of(tmp_path, {"a": 'command = ["x"]\n', "b": 'command = ["y"]\nrequires = ["a"]\n'})
    assert found == [] and plan.feasible and plan.outcome is None
    assert plan.to_json()["waves"] == [["a"], ["b"]]


def test_plan_json_as_a_user_sees_it(tmp_path):
    root = make_stack(tmp_path, QA_UNITS)
    gpus = json.dumps([{"index": 0, **RTX4090}])
    r = qasup("plan", "--json", "-b", "vllm", "-m", "Qwen-7B", "-s", "7B", cwd=root, env={"QASUP_GPUS": gpus})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    assert out["runtime_backend"] == "vllm" and out["feasible"] is True
    assert out["waves"] == [["vllm"], ["embed"], ["ocr"], ["api"]]
    assert out["gpu_order"] == [["vllm", "embed"], ["embed", "ocr"]]
    svc = {s["name"]: s for s in out["services"]}
    assert svc["api"]["requires"] == ["embed", "vllm"] and svc["api"]["wave"] == 3
    assert svc["hf"]["enabled"] is False and svc["hf"]["wave"] is None
    assert svc["vllm"]["env"] == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}


def test_plan_infeasible_exits_1(tmp_path):
    root = make_stack(tmp_path, {"big": 'command = ["x"]\ngpu = "llm"\nvram_mib = 30000\n'})
    gpus = json.dumps([{"index": 0, **RTX4090}])
    r = qasup("plan", "-s", "7B", cwd=root, env={"QASUP_GPUS": gpus})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "INFEASIBLE" in r.stdout and "30000 MiB" in r.stdout
    r = qasup("check", "-s", "7B", cwd=root, env={"QASUP_GPUS": gpus})
    assert r.returncode == 0 and "infeasible" in r.stderr
