"""One owner per rule in the config layer: the ``[when]`` facts are the ones the plan produces, the ``[plan]``
keys are the plan's inputs, every default a loader falls back to is the spec dataclass's own, and the typed
reader reports the way the corpus expects."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from supervisor.config import spec as S
from supervisor.config.facts import WHEN_FACTS
from supervisor.config.loader import load_config
from supervisor.config.reader import Reader, closest, typename
from supervisor.config.stack import PLAN_KEYS
from supervisor.errors import Problems
from supervisor.plan.gpu import GpuInfo
from supervisor.plan.qanything import PlanInputs, decide

from conftest import make_stack

GPUS = [GpuInfo(0, "NVIDIA GeForce RTX 3090", 24576, 24576, "8.6"), GpuInfo(1, "Tesla T4", 15360, 15360, "7.5")]


@pytest.mark.parametrize("inputs", [
    PlanInputs(), PlanInputs(device_id="0,1", tensor_parallel=1), PlanInputs(llm_api="cloud"),
    PlanInputs(runtime_backend="vllm", device_id="0,1", model_name="m", model_size="3B"),
])
def test_the_plan_produces_exactly_the_when_facts(inputs):
    facts = decide(inputs, GPUS).when_facts()
    assert list(facts) == list(WHEN_FACTS)
    for name, value in facts.items():
        kind, choices = WHEN_FACTS[name]
        assert isinstance(value, kind), (name, value)
        assert choices is None or value in choices, (name, value)


def test_the_plan_table_holds_the_plan_inputs_and_the_inventory():
    assert set(PLAN_KEYS) - {"gpus"} == {f.name for f in dataclasses.fields(PlanInputs)}


def test_empty_tables_load_the_spec_defaults(tmp_path):
    unit = ('command = ["x"]\n[log]\n[ready]\n[restart]\n[stop]\n[prepare]\ncommand = ["p"]\n'
            '[[on_log]]\nmatch = "boom"\n')
    config = load_config(cwd=make_stack(tmp_path, {"web": unit}, stack_toml="[stack]\n"))
    u = config.units["web"]
    assert (u.log, u.ready, u.restart, u.stop) == (S.LogSpec(), S.ReadySpec(), S.RestartSpec(), S.StopSpec())
    assert u.prepare == S.PrepareSpec(("p",))
    assert u.on_log == (S.LogRule("boom"),)
    bare = S.UnitSpec(name="web", file=u.file, command=("x",))
    assert (u.description, u.enabled, u.gpu, u.vram_mib, u.cwd) == (
        bare.description, bare.enabled, bare.gpu, bare.vram_mib, bare.cwd)
    assert dataclasses.replace(config.stack, file=None) == S.StackSpec(root=config.stack.root)


def _reader(data, allowed, prefix="") -> tuple[Reader, Problems]:
    probs = Problems()
    return Reader(probs, Path("u.toml"), data, prefix, allowed), probs


def test_reader_reports_unknown_keys_with_a_hint():
    _, probs = _reader({"comand": 1, "zzz": 2}, {"command"}, "ready.")
    assert [str(p) for p in probs.items] == ["u.toml: ready.comand: unknown key (did you mean 'command'?)",
                                             "u.toml: ready.zzz: unknown key"]


def test_reader_falls_back_to_the_default_and_says_why():
    r, probs = _reader({"n": True, "s": 3, "d": "5 minutes", "e": "sometimes", "names": ["a", "A", "a"]},
                       {"n", "s", "d", "e", "names"})
    assert r.integer("n", 7) == 7
    assert r.string("s", "dflt") == "dflt"
    assert r.duration("d", 1.5) == 1.5
    assert r.enum("e", ("always", "never"), "never") == "never"
    assert r.names("names") == ("a",)
    assert r.string("absent") is None and r.boolean("absent", True) is True
    assert [p.message for p in probs.items] == [
        "expected an integer, got a boolean", "expected a string, got an integer",
        "'5 minutes' is not a duration such as \"500ms\", \"10s\", \"5m\" or \"1h\"",
        "'sometimes' is not one of always, never",
        "'A' is not a valid service name (lowercase letters, digits, '_', '.', '-')", "lists a name twice"]


def test_reader_helpers():
    assert typename([]) == "an array" and typename({}) == "a table" and typename(1.5) == "a number"
    assert closest("requirs", {"requires", "after"}) == "requires"
    assert closest("xyz", {"requires"}) is None
