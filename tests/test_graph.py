"""The dependency graph: waves, cycles, critical path, dependents, reachability.

Graphs are built directly (``Graph.build``) for the algorithms, and from real stacks through the plan for
how units become nodes (provides, disabled units, ``after`` on disabled units).
"""

from __future__ import annotations

import random

import pytest

from supervisor.config.loader import load_config
from supervisor.errors import Problems
from supervisor.plan.build import make_plan
from supervisor.plan.graph import Graph

from conftest import make_stack


def g(requires: dict[str, list[str]] | None = None, after: dict[str, list[str]] | None = None,
      extra: tuple[str, ...] = ()) -> Graph:
    requires, after = requires or {}, after or {}
    nodes = set(extra) | set(requires) | set(after)
    for deps in (*requires.values(), *after.values()):
        nodes.update(deps)
    return Graph.build(nodes, requires, after)


def plan_of(tmp_path, units: dict[str, str], stack_toml: str | None = None):
    config = load_config(cwd=make_stack(tmp_path, units, stack_toml))
    probs = Problems()
    plan = make_plan(config, {}, [], probs, environ={}, check_paths=False)
    return plan, [f"{p.file.rsplit('/', 1)[-1]}: {p.key}: {p.message}" for p in probs.items]


# ------------------------------------------------------------------------------------------------ waves

def test_waves_follow_the_longest_chain():
    graph = g({"api": ["db", "cache"], "cache": ["db"], "worker": ["db"], "web": ["api"]},
              {"metrics": ["web"]}, extra=("lonely",))
    assert graph.waves() == [["db", "lonely"], ["cache", "worker"], ["api"], ["web"], ["metrics"]]
    order = graph.order()
    assert order.index("db") < order.index("cache") < order.index("api") < order.index("web")


def test_build_drops_unknown_and_self_edges_and_after_duplicating_requires():
    graph = Graph.build(["a", "b"], {"a": ["b", "b", "zzz", "a"]}, {"a": ["b"], "b": ["nope"]})
    assert graph.requires == {"a": ("b",), "b": ()}
    assert graph.after == {"a": (), "b": ()}
    assert graph.cycles() == []


def test_empty_graph():
    graph = Graph.build([], {}, {})
    assert graph.waves() == [] and graph.cycles() == [] and graph.critical_path({}) == (0.0, [])


def test_order_refuses_a_cycle():
    with pytest.raises(ValueError, match="cycle"):
        g({"a": ["b"], "b": ["a"]}).order()


# ------------------------------------------------------------------------------------------------ cycles

@pytest.mark.parametrize("edges, cycle", [
    ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
    ({"c": ["a"], "a": ["b"], "b": ["c"]}, ["a", "b", "c", "a"]),
    ({"w": ["x"], "x": ["y"], "y": ["z"], "z": ["w"], "v": ["w"]}, ["w", "x", "y", "z", "w"]),
    # the shortest way back to the smallest name, when the component holds several cycles
    ({"a": ["b", "d"], "b": ["c"], "c": ["a"], "d": ["a"]}, ["a", "d", "a"]),
])
def test_cycles_are_named_as_paths(edges, cycle):
    assert g(edges).cycles() == [cycle]


def test_a_self_edge_is_a_cycle_of_one():
    """``build`` drops self edges (the loader reports them); a graph made by hand still names them."""
    graph = Graph(("a", "b"), {"a": ("a",), "b": ()}, {"a": (), "b": ()})
    assert graph.cycles() == [["a", "a"]]


def test_cycles_through_after_edges_and_several_at_once():
    graph = g({"a": ["b"], "x": ["y"]}, {"b": ["a"], "y": ["x"], "q": ["a"]})
    assert sorted(graph.cycles()) == [["a", "b", "a"], ["x", "y", "x"]]


@pytest.mark.parametrize("length", [2, 3, 4])
def test_cycle_reported_once_by_the_plan(tmp_path, length):
    names = [f"s{i}" for i in range(length)]
    units = {n: f'command = ["x"]\nrequires = ["{names[(i + 1) % length]}"]\n' for i, n in enumerate(names)}
    plan, found = plan_of(tmp_path, units)
    assert found == [f"s0.toml: requires: dependency cycle: {' -> '.join(names + ['s0'])}"]
    assert plan.to_json()["waves"] == []


def test_self_dependency_is_reported_by_the_loader(tmp_path):
    from supervisor.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(cwd=make_stack(tmp_path, {"web": 'command = ["x"]\nrequires = ["web"]\n'}))
    assert [str(p).split("/")[-1] for p in e.value.problems] == [
        "web.toml: requires: 'web' cannot depend on itself: web -> web"]


def test_tarjan_matches_brute_force_on_random_graphs():
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 8)
        names = [chr(97 + i) for i in range(n)]
        req = {a: [b for b in names if b != a and rng.random() < 0.2] for a in names}
        graph = Graph.build(names, req, {})
        on_cycle = {a for a in names if graph.reaches(a, a)}
        found = graph.cycles()
        assert {x for c in found for x in c} <= on_cycle
        assert bool(found) == bool(on_cycle)
        for c in found:
            assert c[0] == c[-1] and all(b in graph.deps(a) for a, b in zip(c, c[1:], strict=False))
        if not found:
            assert len(graph.order()) == n


# ------------------------------------------------------------------------------------------------ critical path

def test_critical_path_sums_the_slowest_chain():
    graph = g({"api": ["db", "llm"], "web": ["api"], "llm": ["model"]}, extra=("side",))
    total, path = graph.critical_path({"db": 2, "model": 30, "llm": 60, "api": 5, "web": 1, "side": 80})
    assert (total, path) == (96.0, ["model", "llm", "api", "web"])
    total, path = graph.critical_path({"side": 100})
    assert (total, path) == (100.0, ["side"])


def test_critical_path_counts_after_edges_and_missing_durations_as_zero():
    graph = g({}, {"b": ["a"], "c": ["b"]})
    assert graph.critical_path({"a": 1.5, "c": 2}) == (3.5, ["a", "b", "c"])


# ------------------------------------------------------------------------------------------------ dependents / reaches

def test_dependents_nearest_first():
    graph = g({"api": ["db"], "web": ["api"], "worker": ["db"], "report": ["worker", "web"]},
              {"metrics": ["db"]})
    assert graph.dependents("db") == ["api", "worker", "report", "web"]
    assert graph.dependents("db", transitive=False) == ["api", "worker"]
    assert graph.dependents("db", requires_only=False) == ["api", "metrics", "worker", "report", "web"]
    assert graph.dependents("report") == []


def test_reaches_and_waits_for():
    graph = g({"web": ["api"], "api": ["db"]}, {"db": ["disk"]}, extra=("x",))
    assert graph.reaches("web", "disk") and graph.reaches("api", "db")
    assert not graph.reaches("db", "web") and not graph.reaches("x", "db") and not graph.reaches("web", "web")
    assert graph.waits_for("web") == {"api", "db", "disk"}


def test_dependents_and_reaches_scale_linearly():
    """A 3000-node chain: the naive algorithms took seconds (quadratic); these stay well below that."""
    import time

    n = 3000
    names = [f"n{i:05d}" for i in range(n)]
    graph = Graph.build(names, {names[i]: [names[i - 1]] for i in range(1, n)}, {})
    t0 = time.perf_counter()
    assert len(graph.dependents(names[0])) == n - 1
    assert all(graph.reaches(names[-1], names[i]) for i in range(0, n, 10))
    assert len(graph.waves()) == n
    assert time.perf_counter() - t0 < 2.0


# ------------------------------------------------------------------------------------------------ from stacks

def test_provides_resolves_to_the_enabled_provider(tmp_path):
    plan, found = plan_of(tmp_path, {
        "api": 'command = ["x"]\nrequires = ["llm", "db"]\n',
        "vllm": 'command = ["x"]\nprovides = ["llm"]\nenabled = false\n',
        "hf": 'command = ["x"]\nprovides = ["llm"]\n',
        "db": 'command = ["x"]\n'})
    assert found == []
    assert plan.graph.requires["api"] == ("db", "hf")
    assert plan.graph.nodes == ("api", "db", "hf")
    assert plan.graph.waves() == [["db", "hf"], ["api"]]


def test_disabled_units_are_not_nodes_and_after_on_them_is_fine(tmp_path):
    plan, found = plan_of(tmp_path, {
        "api": 'command = ["x"]\nafter = ["ocr", "cache"]\n',
        "ocr": 'command = ["x"]\nenabled = false\n',
        "cache": 'command = ["x"]\n[when]\nruntime_backend = ["vllm"]\n'})
    assert found == []
    assert plan.graph.nodes == ("api",)
    assert plan.graph.after["api"] == ()
    assert plan.graph.waves() == [["api"]]
    reasons = {s["name"]: (s["enabled"], s["reason"]) for s in plan.to_json()["services"]}
    assert reasons["ocr"] == (False, "enabled = false")
    assert reasons["cache"][0] is False and "runtime_backend" in reasons["cache"][1]


def test_requires_on_a_disabled_unit_names_both(tmp_path):
    plan, found = plan_of(tmp_path, {"api": 'command = ["x"]\nrequires = ["db"]\n',
                                     "db": 'command = ["x"]\nenabled = false\n'})
    assert len(found) == 1
    assert found[0].startswith("api.toml: requires: requires 'db', but it is disabled in this plan: "
                               "db (enabled = false)")
