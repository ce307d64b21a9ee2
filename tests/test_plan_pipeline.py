"""The one plan pipeline, in-process: ``load_plan(PlanRequest)`` (config -> inventory -> plan), the errors it
raises (ConfigError with every problem, UsageError for bad flags or inventory), and the plan's messages built at
construction. The CLI's view of the same paths is in test_check_corpus.py and test_plan_units.py.
"""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType

import pytest

from supervisor.config.loader import load_config
from supervisor.errors import ConfigError, Problems
from supervisor.plan.build import make_plan
from supervisor.plan.gpu import GpuInfo
from supervisor.plan.pipeline import PlanRequest, UsageError, inventory_stage, load_plan, load_stage
from supervisor.plan.result import Plan

from conftest import make_stack

GPU = {"index": 0, "name": "NVIDIA GeForce RTX 3090", "memory_total_mib": 24576, "memory_free_mib": 24000,
       "compute_capability": "8.6"}
QA_UNIT = 'command = ["x", "${RUNTIME_BACKEND}"]\ngpu = "llm"\n[when]\nllm_api = "local"\n'


def request(root, **kw) -> PlanRequest:
    kw.setdefault("environ", {"QASUP_GPUS": "none"})
    return PlanRequest(cwd=root, **kw)


def test_a_plain_stack_plans(tmp_path):
    root = make_stack(tmp_path, {"web": 'command = ["serve", "${QASUP_SERVICE}"]\n'})
    plan = load_plan(request(root))
    assert isinstance(plan, Plan) and plan.feasible
    assert plan.outcome is None and plan.messages == ()
    assert plan.resolved["web"].argv == ("serve", "web")


def test_the_request_is_frozen_and_can_be_planned_again(tmp_path):
    """A reload plans the same request again and sees the files as they are then."""
    root = make_stack(tmp_path, {"web": 'command = ["a"]\n'})
    req = request(root)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.gpus = "none"
    assert load_plan(req).resolved["web"].argv == ("a",)
    (root / "services.d" / "web.toml").write_text('command = ["b"]\n')
    assert load_plan(req).resolved["web"].argv == ("b",)


def test_every_problem_is_raised_at_once(tmp_path):
    root = make_stack(tmp_path, {"web": 'command = ["x", "${NOPE}"]\nrequires = ["dbx"]\nbogus = 1\n',
                                 "db": 'command = ["y"]\n'})
    with pytest.raises(ConfigError) as e:
        load_plan(request(root))
    keys = [(p.file.rsplit("/", 1)[-1], p.key) for p in e.value.problems]
    assert keys == [("web.toml", "bogus"), ("web.toml", "requires"), ("web.toml", "command")]


def test_no_stack_at_all_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_stage(request(tmp_path / "nowhere"), Problems())
    assert e.value.problems and "is not a folder of unit files" in e.value.problems[0].message


def test_bad_flags_are_a_usage_error(tmp_path):
    root = make_stack(tmp_path, {"llm": QA_UNIT})
    with pytest.raises(UsageError, match=r'^-i/--device-id: "x" is not a list of GPU ids like 0 or 0,1$'):
        load_plan(request(root, overrides=MappingProxyType({"device_id": "x"})))


def test_a_bad_declared_inventory_is_a_usage_error(tmp_path):
    root = make_stack(tmp_path, {"llm": QA_UNIT})
    with pytest.raises(UsageError, match=r"^--gpus: GPU entry #0: missing field 'name'$"):
        load_plan(request(root, gpus='[{"index": 0}]'))


def test_the_inventory_comes_from_the_request_environ(tmp_path):
    """QASUP_GPUS is read from the request's environ, not from this process's environment."""
    root = make_stack(tmp_path, {"llm": QA_UNIT})
    plan = load_plan(request(root, environ={"QASUP_GPUS": json.dumps([GPU])}))
    assert [g.name for g in plan.gpus] == [GPU["name"]]
    assert plan.resolved["llm"].argv == ("x", "default")
    assert plan.resolved["llm"].env["CUDA_VISIBLE_DEVICES"] == "0"


def test_gpus_flag_wins_over_the_environ(tmp_path):
    root = make_stack(tmp_path, {"llm": QA_UNIT})
    plan = load_plan(request(root, gpus="none", environ={"QASUP_GPUS": json.dumps([GPU])}))
    assert plan.gpus == ()


def test_the_stack_files_inventory_is_a_path_from_the_stack_folder(tmp_path):
    root = make_stack(tmp_path, {"llm": QA_UNIT}, stack_toml='[plan]\ngpus = "gpus.json"\n',
                      files={"gpus.json": json.dumps([GPU])})
    config = load_stage(request(root), Problems())
    inventory = inventory_stage(request(root, environ={}), config, {})
    assert [g.index for g in inventory.gpus] == [0] and inventory.source == "--gpus"
    inline = make_stack(tmp_path / "inline", {"llm": QA_UNIT},
                        stack_toml='[plan]\ngpus = [{index = 0, name = "A10", memory_total_mib = 24000, '
                                   'compute_capability = "8.6"}]\n')
    assert [g.name for g in inventory_stage(request(inline), load_stage(request(inline), Problems()), {}).gpus] \
        == ["A10"]


def test_check_paths_false_does_not_look_for_required_paths(tmp_path):
    root = make_stack(tmp_path, {"web": 'command = ["x"]\nrequires_paths = ["missing.bin"]\n'})
    assert load_plan(request(root, check_paths=False)).feasible
    plan = load_plan(request(root))
    assert not plan.feasible and plan.error == f"missing paths: {root / 'missing.bin'} (required by web)"


def test_notes_are_the_last_messages_of_a_qanything_plan(tmp_path):
    """The inventory's note is built into the plan (never patched onto it afterwards), after the rules' own."""
    config = load_config(cwd=make_stack(tmp_path, {"llm": QA_UNIT}))
    gpus = [GpuInfo(**GPU)]
    plain = make_plan(config, {}, gpus, Problems(), environ={}, check_paths=False)
    noted = make_plan(config, {}, gpus, Problems(), environ={}, check_paths=False, notes=("GPU inventory: x",))
    assert noted.messages == plain.messages + ("GPU inventory: x",)


def test_notes_are_left_out_without_the_qanything_rules(tmp_path):
    config = load_config(cwd=make_stack(tmp_path / "p", {"web": 'command = ["x"]\n'}))
    plan = make_plan(config, {}, [], Problems(), environ={}, check_paths=False, notes=("GPU inventory: x",))
    assert plan.messages == ()


def test_an_http_expect_is_checked_as_a_linear_time_pattern_once_expanded(tmp_path):
    """`[ready]`/`[live]` http `expect` goes through the log patterns' rules after `${NAME}` expansion: a
    lookahead is refused at plan time with the key's file, a plain expanded model name is fine."""
    root = make_stack(tmp_path, {
        "web": '''command = ["x"]
               [ready]
               http = { url = "http://127.0.0.1:1/", expect = "ready(?=!)" }
               [live]
               http = { url = "http://127.0.0.1:1/", expect = "${MODEL:-Qwen-7B}" }
               '''.replace("               ", "")})
    with pytest.raises(ConfigError) as e:
        load_plan(request(root))
    [p] = e.value.problems
    assert p.file.endswith("web.toml") and p.key == "ready.http.expect", p
    assert "lookahead" in p.message and "linear-time" in p.message, p.message
    (root / "services.d" / "web.toml").write_text(
        (root / "services.d" / "web.toml").read_text().replace("ready(?=!)", "ready!"))
    plan = load_plan(request(root))
    assert plan.resolved["web"].ready.http is not None and plan.resolved["web"].ready.http.expect == "ready!"
    assert plan.resolved["web"].live is not None and plan.resolved["web"].live.http.expect == "Qwen-7B"
