"""``[live]`` actions and ``restart_with`` end to end: real processes under ``qasup up``, real HTTP, real
signals, what ``qasup status`` and events.jsonl show. The decisions themselves (each action, thresholds,
recovery, restart_with chains, no restart at shutdown) are tested in-process in tests/test_engine_machine.py;
the check-time rules of ``restart_with`` are here too, through the real plan."""

from __future__ import annotations

import textwrap

import pytest

from supervisor.config.loader import load_config
from supervisor.errors import ConfigError, Problems
from supervisor.plan.build import make_plan

from conftest import make_stack, qasup
from enginehelp import PY, free_port, poll, stack, together, together_alone, together_results, up  # noqa: F401  (fixtures)

SLEEP = ["sh", "-c", "echo up; exec sleep 100"]

# An HTTP server that stops answering (it accepts, then never replies) while the file HANG exists; started
# while HANG exists, it waits for it to go before it listens (so the test holds a restarted run in `starting`).
HANGING_SERVER = textwrap.dedent("""\
    import http.server, os, sys, time
    port, hang = int(sys.argv[1]), sys.argv[2]
    while os.path.exists(hang):
        time.sleep(0.02)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if os.path.exists(hang):
                time.sleep(60)
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()
""")


def plan_problems(tmp_path, units: dict[str, str]):
    config = load_config(cwd=make_stack(tmp_path, units))
    probs = Problems()
    plan = make_plan(config, {}, [], probs, environ={}, check_paths=False)
    return plan, [f"{p.file.rsplit('/', 1)[-1]}: {p.key}: {p.message}" for p in probs.items]


# ------------------------------------------------------------------------------------------ check time

@together
def test_restart_with_an_unknown_name_is_a_check_error(tmp_path):
    make_stack(tmp_path, {"controller": 'command = ["x"]\n',
                          "worker": 'command = ["x"]\nrestart_with = ["controler"]\n'})
    r = qasup("check", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert ("worker.toml: restart_with: unknown service 'controler': no unit is named so or provides it "
            "(did you mean 'controller'?)") in r.stdout + r.stderr


@together
def test_restart_with_itself_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(cwd=make_stack(tmp_path, {"w": 'command = ["x"]\nrestart_with = ["w"]\n'}))
    assert [str(p).split("/")[-1] for p in e.value.problems] == [
        "w.toml: restart_with: 'w' cannot depend on itself: w -> w"]


@together
def test_restart_with_implies_after_and_resolves_provided_names(tmp_path):
    plan, probs = plan_problems(tmp_path, {
        "fastchat-controller": 'command = ["x"]\nprovides = ["controller"]\n',
        "worker": 'command = ["x"]\nrestart_with = ["controller"]\n'})
    assert probs == []
    assert plan.graph.after["worker"] == ("fastchat-controller",)
    assert plan.graph.restart_with == {"worker": ("fastchat-controller",)}
    assert plan.graph.waves() == [["fastchat-controller"], ["worker"]]


@together
def test_restart_with_that_closes_a_cycle_names_the_key(tmp_path):
    _, probs = plan_problems(tmp_path, {"a": 'command = ["x"]\nrestart_with = ["b"]\n',
                                        "b": 'command = ["x"]\nafter = ["a"]\n'})
    assert probs == ["a.toml: restart_with: dependency cycle: a -> b -> a"]


@together
def test_restart_with_a_unit_disabled_in_the_plan_is_no_edge(tmp_path):
    plan, probs = plan_problems(tmp_path, {"a": 'command = ["x"]\nenabled = false\n',
                                           "b": 'command = ["x"]\nrestart_with = ["a"]\n'})
    assert probs == [] and plan.graph.restart_with == {} and plan.graph.after["b"] == ()


# ------------------------------------------------------------------------------------------ real processes

def test_a_server_that_stops_answering_is_restarted_and_status_says_why(stack, up, tmp_path):
    port, hang = free_port(), tmp_path / "hang"
    server = tmp_path / "server.py"
    server.write_text(HANGING_SERVER)
    url = f"http://127.0.0.1:{port}/"
    stack.unit("web", command=[PY, str(server), str(port), str(hang)], ready={"http": url, "timeout": "20s"},
               live={"http": url, "interval": "200ms", "timeout": "300ms", "failures": 2, "action": "restart"},
               restart={"delay": "100ms"})
    u = up().start()
    u.wait_state("web", "ready", timeout=20)
    first_pid = u.service_status("web")["pid"]
    hang.touch()
    # the restarted run waits for HANG to go: it is held in `starting`, where status shows why it restarted
    row = poll(lambda: (s := u.service_status("web"))["restarts"] == 1 and s["state"] == "starting"
               and s["pid"] is not None and s, 20, lambda: f"a spawned liveness restart; output:\n{u.out}")
    assert row["last_error"].startswith("liveness: 2 failed checks in a row: "), row
    assert row["pid"] not in (None, first_pid)
    table = qasup("status", "web", cwd=tmp_path, env={"COLUMNS": "300"})
    assert "liveness: 2 failed checks in a row" in table.stdout, table.stdout
    hang.unlink()
    u.wait_state("web", "ready", nth=2, timeout=20)
    stopping = [e for e in u.events() if e.get("service") == "web" and e["state"] == "stopping"]
    assert len(stopping) == 1 and stopping[0]["message"].startswith("live-restart: liveness: 2 failed checks")
    assert stopping[0]["pid"] == first_pid
    u.wait_out(": restarting it")   # qasup's stdout is written by a thread: not ordered with events
    assert "web: liveness: 2 failed checks in a row: " in u.out and ": restarting it" in u.out
    after = u.service_status("web")
    assert after["state"] == "ready" and after["pid"] == row["pid"] and after["restarts"] == 1
    assert u.stop() == 0


@together
def test_restarting_the_controller_restarts_the_worker_after_it_is_ready(stack, up, tmp_path):
    stack.unit("controller", command=["sh", "-c", "sleep 0.3; echo up; exec sleep 100"], ready={"log": "^up$"})
    stack.unit("worker", command=SLEEP, ready={"log": "^up$"}, requires=["controller"],
               restart_with=["controller"])
    stack.unit("bystander", command=SLEEP, ready={"log": "^up$"}, requires=["controller"])
    u = up().start()
    u.wait_state("worker", "ready", timeout=20)
    u.wait_state("bystander", "ready", timeout=20)
    before = {n: u.service_status(n)["pid"] for n in ("controller", "worker", "bystander")}
    r = qasup("restart", "controller", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    u.wait_state("worker", "ready", nth=2, timeout=20)
    after = {n: u.service_status(n)["pid"] for n in ("controller", "worker", "bystander")}
    assert after["controller"] != before["controller"] and after["worker"] != before["worker"]
    assert after["bystander"] == before["bystander"], "only what names it in restart_with restarts"
    evs = u.events()

    def index(name: str, state: str, nth: int = 1) -> int:
        found = [i for i, e in enumerate(evs) if e.get("service") == name and e["state"] == state
                 and e.get("prev") != state]
        return found[nth - 1]

    worker_stop = index("worker", "stopping")
    assert evs[worker_stop]["message"] == "restart-with: restart with controller: controller has a new instance, ready"
    assert evs[worker_stop]["pid"] == before["worker"]
    assert index("controller", "ready", 2) < worker_stop < index("worker", "starting", 2) < index("worker", "ready", 2)
    assert u.service_status("worker")["restarts"] == 0    # not a failure: the restart policy is not involved
    assert u.stop() == 0
