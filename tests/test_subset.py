"""``up|check|plan --only`` / ``--except`` (and ``$QASUP_ONLY`` / ``$QASUP_EXCEPT``): which units run here,
which are waited on elsewhere through their probes, which are not run here; the usage errors (exit 2) and the
problem for a unit that cannot be waited on from here; the GPU stages seeing only this machine's units; ``plan``
text and JSON; a reload planning the same subset. In-process through ``load_plan`` where the exit code is not
the point, the command line where it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.plan.pipeline import PlanRequest, UsageError, load_plan
from supervisor.plan.result import ELSEWHERE, EXTERNAL, HERE
from supervisor.plan.subset import split_names

from conftest import make_stack, qasup
from enginehelp import poll, up  # noqa: F401  (fixture)

ENV = {"QASUP_GPUS": "none"}

# ctl <- worker (requires, restart_with; provides llm) <- api (requires llm, after cache) ; cache ; mon (alone)
# store <- ctl (ctl's own requirement: not followed when ctl runs elsewhere)
UNITS = {
    "store": 'command = ["sleep", "100"]\n[ready]\ntcp = "127.0.0.1:7000"\n',
    "ctl": 'command = ["sleep", "100"]\nrequires = ["store"]\n'
           '[ready]\nhttp = { url = "http://${CTL_ADDR:-127.0.0.1:7800}/list_models", method = "POST" }\n'
           '[live]\nlog = "heartbeat"\nhttp = "http://${CTL_ADDR:-127.0.0.1:7800}/health"\n',
    "worker": 'command = ["sleep", "100"]\nrequires = ["ctl"]\nrestart_with = ["ctl"]\nprovides = ["llm"]\n'
              '[ready]\ntcp = "${WORKER_ADDR:-127.0.0.1:7801}"\nlog = "loaded"\n[live]\nlog = "beat"\n',
    "api": 'command = ["sleep", "100"]\nrequires = ["llm"]\nafter = ["cache"]\n[ready]\nexec = ["true"]\n',
    "cache": 'command = ["sleep", "100"]\n[ready]\ntcp = "127.0.0.1:6379"\n',
    "mon": 'command = ["sleep", "100"]\n',
}


def stack(tmp_path: Path, **changes: str) -> Path:
    return make_stack(tmp_path, {**UNITS, **changes})


def plan(root: Path, only: tuple[str, ...] = (), exclude: tuple[str, ...] = (), **env: str):
    return load_plan(PlanRequest(cwd=root, environ={**ENV, **env}, only=only, exclude=exclude))


def usage(root: Path, **kw) -> str:
    with pytest.raises(UsageError) as e:
        plan(root, **kw)
    return str(e.value)


def test_split_names():
    assert split_names(["a,b", " c , a", ",", ""]) == ("a", "b", "c")


def test_only_runs_its_units_and_waits_on_their_direct_requirements(tmp_path):
    p = plan(stack(tmp_path), only=("worker", "mon"))
    assert p.runs_here == ["mon", "worker"] and p.waited_on == ["ctl"]   # in the config's (the files') order
    assert p.not_run_here == ["api", "cache", "store"]   # store: ctl's requirement, ctl's machine's affair
    assert p.run_elsewhere == 4
    assert set(p.graph.nodes) == {"ctl", "worker", "mon"} and set(p.resolved) == {"ctl", "worker", "mon"}
    assert p.graph.requires["worker"] == ("ctl",) and p.graph.restart_with["worker"] == ("ctl",)
    assert p.graph.requires["ctl"] == () and p.graph.after["ctl"] == ()    # its own edges are not followed
    ctl = p.resolved["ctl"]
    assert ctl.external and ctl.spec.external and ctl.argv == () and ctl.spec.requires == ()
    assert ctl.ready.http is not None and ctl.ready.http.url == "http://127.0.0.1:7800/list_models"
    assert ctl.live is not None and ctl.live.log is None and ctl.live.http is not None   # its log check: dropped
    assert "ctl runs elsewhere: its [live] log check cannot run from here and is left out" in p.messages
    s = p.services
    assert (s["ctl"].placement, s["ctl"].enabled, s["ctl"].needed_by) == (EXTERNAL, True, ("worker",))
    assert s["ctl"].reason == "outside --only: runs elsewhere, waited on here (worker needs it)"
    assert (s["api"].placement, s["api"].enabled, s["api"].wave) == (ELSEWHERE, False, None)
    assert s["api"].reason == "not run here: outside --only (another machine runs it)"
    assert s["worker"].placement == HERE and s["worker"].wave == 1 and s["ctl"].wave == 0
    assert not p.resolved["worker"].external and p.resolved["worker"].argv == ("sleep", "100")
    # the config the engine gets holds the external form; the files were not changed
    assert p.config.units["ctl"].external and p.config.units["ctl"].command == ()


def test_a_waited_on_unit_with_a_log_check_is_a_problem(tmp_path):
    root = stack(tmp_path)
    with pytest.raises(ConfigError) as e:
        plan(root, only=("api",))
    assert [str(x).replace(str(root) + "/", "") for x in e.value.problems] == [
        "services.d/worker.toml: ready: worker is outside --only and needs an http, tcp or exec check to be "
        "waited on from here (api needs it; its [ready] also has a log check, which only the machine that runs "
        "it sees)"]
    root2 = stack(tmp_path / "b", worker=UNITS["worker"].replace('tcp = "${WORKER_ADDR:-127.0.0.1:7801}"\n', ""),
                  mon='command = ["sleep", "100"]\nafter = ["worker"]\n')
    r = qasup("check", "--only", "api,mon", cwd=root2, env=ENV)
    assert r.returncode == 2
    assert r.stderr.replace(str(root2) + "/", "") == (
        "services.d/worker.toml: ready: worker is outside --only and needs an http, tcp or exec check to be waited "
        "on from here (api, mon need it; its [ready] has only a log check, which only the machine that runs it "
        "sees)\nqasup: 1 problem found\n")
    root3 = stack(tmp_path / "c", cache='command = ["sleep", "100"]\n')
    r = qasup("plan", "--except", "cache,ctl,store,worker,mon", cwd=root3, env=ENV)
    assert r.returncode == 2
    assert "services.d/cache.toml: ready: cache is left out by --except and needs an http, tcp or exec check " \
           "to be waited on from here (api needs it; it has no [ready] check)" in r.stderr


def test_provided_names_and_except(tmp_path):
    root = stack(tmp_path, worker=UNITS["worker"].replace('log = "loaded"\n', ""))
    p = plan(root, only=("llm",))   # a provided name: its enabled provider
    assert p.runs_here == ["worker"] and p.waited_on == ["ctl"]
    p = plan(root, only=("api",), WORKER_ADDR="10.0.0.7:7801")
    assert p.runs_here == ["api"] and sorted(p.waited_on) == ["cache", "worker"]   # requires "llm", after cache
    assert p.resolved["worker"].ready.tcp == ("10.0.0.7", 7801) and p.resolved["worker"].live is None
    assert "worker runs elsewhere: its [live] has only a log check, which cannot run from here: it is not " \
           "watched once ready" in p.messages
    p = plan(root, exclude=("store", "ctl"))
    assert sorted(p.runs_here) == ["api", "cache", "mon", "worker"] and p.waited_on == ["ctl"]
    assert p.not_run_here == ["store"] and p.services["store"].reason == "not run here: left out by --except " \
                                                                         "(another machine runs it)"


def test_usage_errors(tmp_path):
    root = stack(tmp_path, gpuonly='command = ["x"]\n[when]\nllm_api = "cloud"\n')
    assert usage(root, only=("wrker", "api", "zzz")) == \
        "--only: unknown service 'wrker' (did you mean 'worker'?); unknown service 'zzz'"
    assert usage(root, exclude=("ap",)) == "--except: unknown service 'ap' (did you mean 'api'?)"
    assert usage(root, only=("api",), exclude=("ctl",)) == \
        "--only and --except cannot be used together: name what runs here, or what does not"
    assert usage(root, only=("gpuonly",)) == \
        "--only: 'gpuonly' is disabled in this plan (llm_api is local, not cloud), so it cannot be run here"
    assert usage(root, exclude=("gpuonly",)) == \
        "--except: 'gpuonly' is disabled in this plan (llm_api is local, not cloud), so it cannot be left out"
    assert usage(root, exclude=tuple(UNITS)) == "--except leaves no unit of this plan to run here"
    r = qasup("up", "--only", "api", "--except", "ctl", cwd=root, env=ENV)
    assert (r.returncode, r.stderr) == (2, "qasup: --only and --except cannot be used together: name what runs "
                                           "here, or what does not\n")
    r = qasup("plan", "--only", "wrker", cwd=root, env=ENV)
    assert (r.returncode, r.stderr) == (2, "qasup: --only: unknown service 'wrker' (did you mean 'worker'?)\n")
    r = qasup("check", cwd=root, env={**ENV, "QASUP_ONLY": "a", "QASUP_EXCEPT": "b"})
    assert (r.returncode, r.stderr) == (2, "qasup: $QASUP_ONLY and $QASUP_EXCEPT cannot both be set: name what "
                                           "runs here, or what does not\n")


def test_environment_form_and_the_flag_winning(tmp_path):
    root = stack(tmp_path, worker=UNITS["worker"].replace('log = "loaded"\n', ""))
    p = plan(root, QASUP_ONLY="worker, mon")
    assert p.runs_here == ["mon", "worker"] and p.subset.source == "QASUP_ONLY"
    p = plan(root, QASUP_EXCEPT="mon")
    assert p.not_run_here == ["mon"] and p.services["mon"].reason == "not run here: left out by QASUP_EXCEPT " \
                                                                     "(another machine runs it)"
    p = plan(root, only=("mon",), QASUP_EXCEPT="mon")   # a flag wins over either variable
    assert p.runs_here == ["mon"] and p.subset.source == "--only"
    assert usage(root, QASUP_ONLY="wroker") == "QASUP_ONLY: unknown service 'wroker' (did you mean 'worker'?)"
    r = qasup("check", cwd=root, env={**ENV, "QASUP_ONLY": "worker"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok: 6 units valid, 6 enabled in this plan; QASUP_ONLY: 1 run here, 1 waited on elsewhere " \
                       "(ctl), 4 not run here\n"
    r = qasup("check", "--only", "mon", cwd=root, env={**ENV, "QASUP_ONLY": "worker"})
    assert r.stdout.endswith("; --only: 1 run here, 5 not run here\n")


def test_plan_text_and_json(tmp_path):
    root = stack(tmp_path, worker=UNITS["worker"].replace('log = "loaded"\n', ""))
    env = {**ENV, "CTL_ADDR": "10.0.0.5:7800"}
    r = qasup("plan", "--only", "worker", "--only", "mon", cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(
        "start order:\n"
        "  wave 0: ctl                      waited on elsewhere: http POST http://10.0.0.5:7800/list_models\n"
        "  wave 0: mon                      needs: -  (always)\n"
        "  wave 1: worker                   needs: ctl  (always)\n"
        "runs here (--only worker,mon): mon, worker\n"
        "waited on elsewhere (probed from here):\n"
        "  ctl: http POST http://10.0.0.5:7800/list_models  (needed by worker)\n"
        "not run here: api, cache, store\n"), r.stdout
    assert "  - ctl runs elsewhere: its [live] log check cannot run from here and is left out\n" in r.stdout
    r = qasup("plan", "--json", "--only", "worker,mon", cwd=root, env=env)
    doc = json.loads(r.stdout)
    assert doc["subset"] == {"only": ["worker", "mon"], "except": None, "source": "--only",
                             "runs_here": ["mon", "worker"],
                             "waited_on": [{"name": "ctl", "probe": "http POST http://10.0.0.5:7800/list_models",
                                            "needed_by": ["worker"]}],
                             "not_run_here": ["api", "cache", "store"], "run_elsewhere": 4}
    svc = {s["name"]: s for s in doc["services"]}
    assert (svc["ctl"]["placement"], svc["ctl"]["external"], svc["ctl"]["enabled"]) == ("external", True, True)
    assert (svc["api"]["placement"], svc["api"]["enabled"]) == ("elsewhere", False)
    assert doc["waves"] == [["ctl", "mon"], ["worker"]]


GPU = json.dumps([{"index": 0, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564,
                   "memory_free_mib": 24000, "compute_capability": "8.9"}])


def test_units_outside_the_subset_do_not_count_for_this_machines_gpus(tmp_path):
    big = 'command = ["x"]\ngpu = "llm"\nvram_mib = {}\n[ready]\ntcp = "${{BIG_ADDR:-127.0.0.1:9}}"\n'
    root = make_stack(tmp_path, {"big": big.format(20000), "other": big.format(10000),
                                 "small": 'command = ["x"]\ngpu = "llm"\nvram_mib = 1000\nrequires = ["big"]\n'},
                      stack_toml='[plan]\nllm_api = "cloud"\n')
    whole = plan(root, QASUP_GPUS=GPU)
    assert not whole.feasible and "need 31000 MiB" in (whole.error or "")
    assert whole.gpu_edges
    p = plan(root, only=("small",), QASUP_GPUS=GPU)
    assert p.feasible, p.error
    assert p.gpu_edges == ()   # big runs elsewhere: no loader order against it
    assert p.services["big"].gpu_ids == () and p.services["big"].env == {} and p.resolved["big"].env.get(
        "CUDA_VISIBLE_DEVICES") is None
    assert p.resolved["small"].cuda_visible_devices == "0"
    assert plan(root, only=("other",), QASUP_GPUS=GPU).feasible


def test_reload_plans_the_same_subset(tmp_path, up):  # noqa: F811
    root = make_stack(tmp_path, {"a": 'command = ["sleep", "100"]\n', "b": 'command = ["sleep", "100"]\n'},
                      stack_toml='[stack]\nstate_dir = "st"\necho = false\n')
    u = up().start("--only", "a")
    u.wait_state("a", "ready")
    assert "[qasup] runs here: a; waits on elsewhere: -; not run here: b" in u.out
    pid = u.service_status("a")["pid"]
    (root / "services.d" / "b.toml").write_text('command = ["sleep", "101"]\n')
    (root / "services.d" / "c.toml").write_text('command = ["sleep", "102"]\n')
    r = qasup("reload", cwd=root)
    assert r.returncode == 0, r.stderr + r.stdout
    code, doc = poll(lambda: (lambda c, d: (c, d) if d and "c" in {s["name"] for s in d["services"]} else None)(
        *u.status("--all")), 10, "c in the status after the reload")
    states = {s["name"]: s["state"] for s in doc["services"]}
    assert states == {"a": "ready", "b": "disabled", "c": "disabled"}, doc
    assert u.service_status("a")["pid"] == pid   # unchanged: not restarted
    assert u.stop() == 0
    assert not (root / "logs" / "b.log").exists() and not (root / "logs" / "c.log").exists()   # never started
