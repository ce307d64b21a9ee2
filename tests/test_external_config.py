"""``external = true`` units in the configuration and the plan: what such a unit may hold (every key of a local
process reported at once, a [ready] that can be checked from here), how it resolves (no argv, no GPU, no log
file written, its probes expanded) and how ``check``/``plan`` show it. In-process through ``load_plan``, plus
the command line for exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.plan.pipeline import PlanRequest, load_plan
from supervisor.plan.result import EXTERNAL, HERE

from conftest import make_stack, qasup

ENV = {"QASUP_GPUS": "none"}

CTL = """
external = true
description = "the FastChat controller, in another pod"
env = { PORT = "7800" }
[ready]
http = { url = "http://${CTL_ADDR:-127.0.0.1}:${PORT}/list_models", method = "POST" }
timeout = "5s"
[live]
tcp = "${CTL_ADDR:-127.0.0.1}:${PORT}"
"""
WORKER = """
command = ["sleep", "100"]
requires = ["ctl"]
[ready]
tcp = "127.0.0.1:7801"
"""


def plan(root: Path, **env: str):
    return load_plan(PlanRequest(cwd=root, environ={**ENV, **env}))


def problems(root: Path, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        plan(root, **env)
    return [str(p).replace(str(root) + "/", "") for p in e.value.problems]


def test_an_external_unit_resolves_to_its_probes_only(tmp_path):
    root = make_stack(tmp_path, {"ctl": CTL, "worker": WORKER})
    p = plan(root, CTL_ADDR="10.0.0.5")
    ctl = p.resolved["ctl"]
    assert ctl.external and ctl.spec.external and not p.resolved["worker"].external
    assert ctl.argv == () and ctl.prepare_argv is None and ctl.requires_paths == () and ctl.rules == ()
    assert ctl.cuda_visible_devices is None and "CUDA_VISIBLE_DEVICES" not in ctl.env
    assert ctl.ready.http is not None and ctl.ready.http.url == "http://10.0.0.5:7800/list_models"
    assert ctl.ready.http.method == "POST" and ctl.ready.timeout == 5.0
    assert ctl.live is not None and ctl.live.tcp == ("10.0.0.5", 7800)
    assert ctl.log_file == root / "logs" / "ctl.log" and not ctl.log_file.exists()   # would-be path, never written
    assert p.graph.requires["worker"] == ("ctl",)
    assert p.services["ctl"].placement == EXTERNAL and p.services["worker"].placement == HERE
    assert p.waited_on == ["ctl"] and p.runs_here == ["worker"] and p.not_run_here == [] and p.run_elsewhere == 1
    assert plan(root).resolved["ctl"].ready.http.url == "http://127.0.0.1:7800/list_models"   # the default


def test_every_key_of_a_local_process_is_reported_at_once(tmp_path):
    root = make_stack(tmp_path, {"ctl": """
        external = true
        command = ["fastchat"]
        user = "root"
        group = "root"
        groups = ["root"]
        type = "forking"
        pid_file = "x.pid"
        gpu = "llm"
        vram_mib = 100
        requires_paths = ["/models"]
        restart_with = ["other"]
        [prepare]
        command = ["true"]
        [log]
        file = "ctl.log"
        [restart]
        policy = "always"
        [stop]
        timeout = "1s"
        [[on_log]]
        match = "boom"
        [ready]
        tcp = "10.0.0.5:7800"
        """, "other": WORKER.replace('requires = ["ctl"]', "")})
    got = problems(root)
    msg = "not allowed in an external unit (it runs elsewhere: qasup starts, stops and logs nothing for it)"
    keys = ["command", "prepare", "stop", "restart", "on_log", "log", "user", "group", "groups", "type",
            "pid_file", "gpu", "vram_mib", "requires_paths", "restart_with"]
    assert got == [f"services.d/ctl.toml: {k}: {msg}" for k in keys]


def test_ready_must_be_checkable_from_here(tmp_path):
    root = make_stack(tmp_path, {
        "none": "external = true\n",
        "empty": "external = true\n[ready]\ntimeout = \"5s\"\n",
        "logged": "external = true\n[ready]\nlog = 'ready'\nnotify = true\n",
        "mixed": "external = true\n[ready]\nlog = 'ready'\ntcp = \"10.0.0.1:1\"\n"
                 "[live]\nlog = 'beat'\nwatchdog = \"5s\"\nhttp = \"http://10.0.0.1:1/\"\n",
    })
    got = problems(root)
    need = "an external unit needs a [ready] with an http, tcp or exec check ({}): qasup knows it only through its probes"
    seen = "not allowed in an external unit: a log check is meaningless there (qasup sees no output of a service " \
           "that runs elsewhere)"
    notify = "not allowed in an external unit: sd_notify is meaningless there (a service that runs elsewhere has " \
             "no NOTIFY_SOCKET of qasup's)"
    assert sorted(got) == sorted([
        f"services.d/none.toml: ready: {need.format('it has no [ready]')}",
        f"services.d/empty.toml: ready: {need.format('its [ready] has none')}",
        f"services.d/logged.toml: ready.log: {seen}",
        f"services.d/logged.toml: ready.notify: {notify}",
        f"services.d/logged.toml: ready: {need.format('its [ready] has none')}",
        f"services.d/mixed.toml: ready.log: {seen}",
        f"services.d/mixed.toml: live.log: {seen}",
        f"services.d/mixed.toml: live.watchdog: {notify}",
        "services.d/mixed.toml: live.watchdog: needs [ready] notify = true (WATCHDOG=1 comes on the service's "
        "NOTIFY_SOCKET)",
    ])


def test_external_must_be_a_boolean_and_a_local_unit_needs_a_command(tmp_path):
    root = make_stack(tmp_path, {"a": 'external = "yes"\n[ready]\ntcp = "10.0.0.1:1"\n', "b": "description = 'x'\n"})
    assert problems(root) == [
        "services.d/a.toml: external: expected true or false, got a string",
        "services.d/a.toml: command: missing: every unit needs a command (an array of strings), unless it is "
        "external = true (a service that runs elsewhere, known by its [ready] probes)",
        "services.d/b.toml: command: missing: every unit needs a command (an array of strings), unless it is "
        "external = true (a service that runs elsewhere, known by its [ready] probes)",
    ]


def test_an_unknown_variable_in_an_external_probe_is_a_problem(tmp_path):
    root = make_stack(tmp_path, {"ctl": "external = true\n[ready]\ntcp = \"${CTL_HOST}:7800\"\n"})
    assert problems(root) == ["services.d/ctl.toml: ready.tcp: unknown variable ${CTL_HOST}: define it in env, an "
                              "env file, the environment, or write ${CTL_HOST:-default}"]


def test_an_external_units_would_be_log_path_clashes_with_nothing(tmp_path):
    # a local unit may write logs/ctl.log: the external ctl writes nothing there
    root = make_stack(tmp_path, {"ctl": CTL, "worker": WORKER + '[log]\nfile = "logs/ctl.log"\n'})
    assert plan(root).resolved["worker"].log_file == root / "logs" / "ctl.log"


def test_an_external_unit_has_nothing_to_stop_in_the_stop_budget(tmp_path):
    # worker's 4 s fit in 5 s; ctl's default 10 s [stop] timeout would not, but an external unit stops nothing
    root = make_stack(tmp_path, {"ctl": CTL, "worker": WORKER + '[stop]\ntimeout = "4s"\n'},
                      stack_toml='[stack]\nstop_budget = "5s"\n')
    r = qasup("check", cwd=root, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr
    assert r.stdout == "ok: 2 units valid, 2 enabled in this plan; 1 run here, 1 waited on elsewhere (ctl)\n"
    local = make_stack(tmp_path / "local", {"ctl": "command = ['x']\n", "worker": WORKER + '[stop]\ntimeout = "4s"\n'},
                       stack_toml='[stack]\nstop_budget = "5s"\n')
    assert "warning: stop timeouts along worker -> ctl add up to 14s" in qasup("check", cwd=local, env=ENV).stderr


def test_check_and_plan_show_an_external_unit(tmp_path):
    root = make_stack(tmp_path, {"ctl": CTL, "worker": WORKER})
    r = qasup("plan", cwd=root, env={**ENV, "CTL_ADDR": "10.0.0.5"})
    assert r.returncode == 0, r.stderr
    assert "  wave 0: ctl                      waited on elsewhere: http POST http://10.0.0.5:7800/list_models\n" \
        in r.stdout
    assert "waited on elsewhere (probed from here):\n  ctl: http POST http://10.0.0.5:7800/list_models  " \
           "(external = true)\n" in r.stdout
    assert "not run here" not in r.stdout   # no subset: nothing is left to other machines
    doc = json.loads(qasup("plan", "--json", cwd=root, env={**ENV, "CTL_ADDR": "10.0.0.5"}).stdout)
    svc = {s["name"]: s for s in doc["services"]}
    assert svc["ctl"]["external"] is True and svc["ctl"]["placement"] == "external"
    assert svc["worker"]["external"] is False and svc["worker"]["placement"] == "here"
    assert doc["subset"] == {"only": None, "except": None, "source": None, "runs_here": ["worker"],
                             "waited_on": [{"name": "ctl", "probe": "http POST http://10.0.0.5:7800/list_models",
                                            "needed_by": []}],
                             "not_run_here": [], "run_elsewhere": 1}
    bad = make_stack(tmp_path / "bad", {"ctl": "external = true\ncommand = ['x']\n[ready]\nlog = 'x'\n"})
    r = qasup("check", cwd=bad, env=ENV)
    assert r.returncode == 2 and r.stderr.endswith("qasup: 3 problems found\n"), r.stderr


def test_an_external_unit_under_only(tmp_path):
    # needed by a unit here: waited on (its own requirement is not followed); needed by nothing here: not run here
    root = make_stack(tmp_path, {"ctl": CTL, "worker": WORKER, "db": 'external = true\n[ready]\ntcp = "10.0.0.9:5432"\n',
                                 "api": 'command = ["x"]\nrequires = ["db"]\n'})
    p = load_plan(PlanRequest(cwd=root, environ=ENV, only=("worker",)))
    assert (p.runs_here, p.waited_on, p.not_run_here) == (["worker"], ["ctl"], ["api", "db"])
    assert p.services["ctl"].needed_by == ("worker",) and p.resolved["ctl"].external
    p = load_plan(PlanRequest(cwd=root, environ=ENV, only=("db", "api")))
    assert (p.runs_here, p.waited_on, p.not_run_here) == (["api"], ["db"], ["ctl", "worker"])
    assert p.services["db"].needed_by == ()   # in the subset itself: an external unit of this machine's part
