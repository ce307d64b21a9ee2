"""Conditional drop-ins: ``NAME.d/*.toml`` with a ``[when]`` of their own apply only in the plans whose facts match;
strict at check time whatever the plan; shown by ``qasup plan`` (applied or skipped, and why)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.config.loader import load_config
from supervisor.errors import ConfigError, Problems
from supervisor.plan.build import make_plan
from supervisor.plan.gpu import GpuInfo

from conftest import qasup

GPUS = [GpuInfo(0, "NVIDIA GeForce RTX 4090", 24564, 24000, "8.9")]
BASE = ('description = "api"\ncommand = ["serve", "--mode", "local"]\nrequires = ["db"]\n'
        'env = { MODE = "local", KEEP = "1" }\n[stop]\ntimeout = "5s"\n')
CLOUD = 'command = ["serve", "--mode", "online"]\nrequires = []\n[when]\nllm_api = "cloud"\n[env]\nMODE = "online"\n'


def stack(tmp_path: Path, dropins: dict[str, str], extra_dirs: dict[str, str] | None = None) -> Path:
    (tmp_path / "services.d" / "api.d").mkdir(parents=True)
    (tmp_path / "services.d" / "api.toml").write_text(BASE)
    (tmp_path / "services.d" / "db.toml").write_text('command = ["db"]\n')
    for name, text in dropins.items():
        (tmp_path / "services.d" / "api.d" / name).write_text(text)
    stack_toml = '[stack]\nname = "t"\n'
    if extra_dirs:
        stack_toml += 'dropins = ["more"]\n'
        (tmp_path / "more" / "api.d").mkdir(parents=True)
        for name, text in extra_dirs.items():
            (tmp_path / "more" / "api.d" / name).write_text(text)
    (tmp_path / "qasup.toml").write_text(stack_toml + '[plan]\nllm_api = "local"\n')
    return tmp_path


def plan_for(root: Path, **overrides):
    probs = Problems()
    plan = make_plan(load_config(cwd=root), overrides, GPUS, probs, environ={}, check_paths=False)
    assert not probs.items, probs.items
    return plan


def test_applies_only_where_its_when_matches(tmp_path):
    root = stack(tmp_path, {"cloud.toml": CLOUD})
    local = plan_for(root)
    assert local.resolved["api"].argv == ("serve", "--mode", "local")
    assert local.resolved["api"].env["MODE"] == "local" and local.services["api"].requires == ("db",)
    [use] = local.services["api"].dropins
    assert (use.applied, use.reason) == (False, "llm_api is local, not cloud")
    cloud = plan_for(root, llm_api="cloud")
    api = cloud.resolved["api"]
    assert api.argv == ("serve", "--mode", "online")
    assert (api.env["MODE"], api.env["KEEP"]) == ("online", "1")          # tables merge key by key
    assert cloud.services["api"].requires == () and api.spec.stop.timeout == 5.0
    assert api.spec.file_of("command").name == "cloud.toml"              # a problem would name the drop-in
    [use] = cloud.services["api"].dropins
    assert (use.applied, use.reason, use.file.name) == (True, "llm_api is cloud", "cloud.toml")
    assert api.spec.when == {}                                             # its [when] is its own, not the unit's


def test_drop_ins_apply_in_file_order_conditional_or_not(tmp_path):
    # the demo's case: a conditional drop-in in services.d, then an unconditional one of the stack's drop-in folder
    root = stack(tmp_path, {"10-cloud.toml": CLOUD, "20-tune.toml": '[env]\nKEEP = "2"\n'},
                 extra_dirs={"standin.toml": 'command = ["standin", "api"]\n'})
    cloud = plan_for(root, llm_api="cloud")
    assert cloud.resolved["api"].argv == ("standin", "api")               # the later file wins
    assert cloud.resolved["api"].env["MODE"] == "online" and cloud.resolved["api"].env["KEEP"] == "2"
    local = plan_for(root)
    assert local.resolved["api"].argv == ("standin", "api") and local.resolved["api"].env["KEEP"] == "2"


def test_any_of_through_several_drop_ins_and_lists(tmp_path):
    root = stack(tmp_path, {"fastchat.toml": '[when]\nruntime_backend = ["hf", "vllm", "sglang"]\n[env]\nLLM = "fastchat"\n',
                            "cloud.toml": CLOUD})
    assert plan_for(root, runtime_backend="vllm", model_name="m", model_size="7B").resolved["api"].env["LLM"] == "fastchat"
    assert "LLM" not in plan_for(root).resolved["api"].env


@pytest.mark.parametrize(("text", "key", "message"), [
    ('[when]\nllm_apix = "cloud"\n', "when.llm_apix", "unknown condition"),
    ('[when]\nllm_api = "moon"\n', "when.llm_api", "'moon' is not one of local, cloud"),
    ('[when]\nsame_gpu = "yes"\n', "when.same_gpu", "expected bool values"),
    ("when = 3\n", "when", "expected a table"),
    ("[when]\n", "when", "an empty [when] matches every plan"),
    ('[when]\nllm_api = "cloud"\nrestartx = 1\n', "when.restartx", "unknown condition"),
    ('[when]\nllm_api = "cloud"\ncommand = ["x"]\n', "when.command", "is a unit key: write it above [when]"),
    ('restartx = 1\n[when]\nllm_api = "cloud"\n', "restartx", "unknown key (did you mean 'restart'?)"),
    ('[when]\nllm_api = "cloud"\n[stop]\ntimeout = "x"\n', "stop.timeout", "is not a duration"),
])
def test_a_bad_conditional_drop_in_is_a_check_error_in_any_plan(tmp_path, text, key, message):
    root = stack(tmp_path, {"bad.toml": text})
    with pytest.raises(ConfigError) as caught:
        load_config(cwd=root)   # the plan here is local: the drop-in would not apply, it is checked all the same
    [problem] = caught.value.problems
    assert (Path(problem.file).name, problem.key) == ("bad.toml", key)
    assert message in problem.message


def test_qasup_plan_shows_what_applied_and_why(tmp_path):
    root = stack(tmp_path, {"cloud.toml": CLOUD})
    text = qasup("plan", "--gpus", "none", "-c", "cloud", cwd=root).stdout
    assert "+ applied services.d/api.d/cloud.toml (llm_api is cloud)" in text
    local = qasup("plan", "--gpus", "none", cwd=root)
    assert "- skipped services.d/api.d/cloud.toml (llm_api is local, not cloud)" in local.stdout
    doc = json.loads(qasup("plan", "--gpus", "none", "-c", "cloud", "--json", cwd=root).stdout)
    [api] = [s for s in doc["services"] if s["name"] == "api"]
    assert api["dropins"] == [{"file": str(root / "services.d/api.d/cloud.toml"), "applied": True,
                               "reason": "llm_api is cloud"}]
    assert qasup("check", cwd=root).returncode == 0
