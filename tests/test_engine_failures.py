"""``qasup up`` when things go wrong: failed dependencies, restarting dependencies, error-line rules,
restart policies, back-off and giving up."""

from __future__ import annotations

import time

from enginehelp import poll, stack, together, together_alone, together_results, up  # noqa: F401  (fixtures)

SLEEP = ["sh", "-c", "echo up; exec sleep 100"]
FAST = {"delay": "50ms", "max_delay": "200ms"}


def starts(u, name: str) -> list[float]:
    return [e["ts"] for e in u.events() if e.get("service") == name and e["state"] in ("starting", "preparing")
            and e.get("prev") not in ("starting", "preparing")]


def test_dependency_failing_for_good_fails_its_dependents_with_its_name(stack, up, tmp_path):
    stack.unit("db", command=["sh", "-c", "echo up; sleep 0.5; exit 3"], ready={"log": "up"},
               restart={"policy": "never"})
    stack.unit("api", command=SLEEP, requires=["db"])
    stack.unit("late", command=["sh", "-c", "sleep 0.8; echo late-up; exec sleep 100"], ready={"log": "late-up"})
    stack.unit("web", command=SLEEP, requires=["late", "db"])   # still waiting for late when db fails
    stack.unit("other", command=SLEEP)
    u = up().start()
    u.wait_state("api", "ready")
    u.wait_state("db", "failed")
    failed = u.wait_state("api", "failed")
    assert "db" in failed["message"]
    assert "stopping" in u.states("api")
    web = u.wait_state("web", "failed")
    assert "requires db, which failed" in web["message"]
    assert "starting" not in u.states("web")
    u.wait_state("other", "ready")
    time.sleep(0.1)
    st = {s["name"]: s for s in u.status()[1]["services"]}
    assert st["api"]["state"] == "failed" and "db" in st["api"]["last_error"]
    assert st["db"]["exit_code"] == 3
    assert st["other"]["state"] == "ready"
    code, doc = u.status()
    assert code == 3 and doc["stack"]["state"] == "degraded"
    assert u.stop() == 0


@together
def test_restarting_dependency_makes_dependents_wait_and_start_once(stack, up, tmp_path):
    count = tmp_path / "count"
    script = (f'echo x >> "{count}"; n=$(wc -l < "{count}"); if [ "$n" -lt 3 ]; then exit 1; fi; '
              'echo ready; if [ "$n" -eq 3 ]; then sleep 0.4; exit 1; fi; exec sleep 100')
    stack.unit("dep", command=["sh", "-c", script], ready={"log": "^ready$"},
               restart={"policy": "on-failure", **FAST})
    stack.unit("user", command=SLEEP, requires=["dep"])
    u = up().start()
    u.wait_state("dep", "ready", nth=2, timeout=10)
    dep_starts = starts(u, "dep")
    user_starts = starts(u, "user")
    assert len(dep_starts) == 4
    assert len(user_starts) == 1, "the dependent started once, not once per dependency restart"
    first_ready = u.first("dep", "ready")["ts"]
    assert user_starts[0] >= first_ready and user_starts[0] > dep_starts[2]
    u.wait_state("user", "ready")
    assert u.service_status("user")["state"] == "ready"
    assert u.stop() == 0


def test_abort_rule_stops_the_stack_within_a_second_with_context(stack, up, tmp_path):
    stamp = tmp_path / "printed"
    stack.unit("gpu", command=["sh", "-c", "echo loading; sleep 0.3; echo ctx-one; echo ctx-two; echo ctx-three; "
                               f'date +%s.%N > "{stamp}"; echo "RuntimeError: CUDA out of memory (tried 2 GiB)"; '
                               "exec sleep 100"],
               on_log=[{"match": "CUDA out of memory", "action": "abort", "context": 2,
                        "message": "GPU ${CUDA_VISIBLE_DEVICES:-none} ran out of memory"}])
    stack.unit("other", command=SLEEP, requires=["gpu"])
    u = up().start()
    code = u.wait(10)
    done = time.time()
    assert code == 1
    assert done - float(stamp.read_text()) < 1.0
    out = u.out
    assert "gpu: error rule 'CUDA out of memory' (abort)" in out
    assert "| ctx-two" in out and "| ctx-three" in out and "ctx-one" not in out.split("(abort)")[1].split(
        "> RuntimeError")[0]
    assert "> RuntimeError: CUDA out of memory (tried 2 GiB)" in out
    assert "GPU none ran out of memory" in out
    assert "stopped" in u.states("other") and "stopped" in u.states("gpu")
    assert any(e.get("stack") == "aborted" for e in u.events())


def test_rules_count_within_restart_fail_warn(stack, up, tmp_path):
    # fail: the 3rd match within 1 s; two early matches then a pause longer than the window do not count
    stack.unit("counted", command=["sh", "-c", "echo up; echo oops; echo oops; sleep 1.2; echo oops; sleep 0.1; "
                                   "echo oops; echo oops; exec sleep 100"],
               ready={"log": "up"}, restart={"policy": "always", **FAST},
               on_log=[{"match": "oops", "action": "fail", "count": 3, "within": "1s", "context": 0}])
    stack.unit("restarter", command=["sh", "-c", "echo up; sleep 0.2; echo please restart; exec sleep 100"],
               ready={"log": "up"}, restart={"policy": "never", **FAST},
               on_log=[{"match": "please restart", "action": "restart"}])
    stack.unit("warner", command=["sh", "-c", "echo up; echo 'WARNING: disk nearly full'; exec sleep 100"],
               ready={"log": "up"}, on_log=[{"match": "^WARNING", "action": "warn", "message": "have a look"}])
    u = up().start()
    t_fail = u.wait_state("counted", "failed", timeout=10)["ts"]
    assert t_fail - u.first("counted", "ready")["ts"] > 1.2
    assert "oops" in u.service_status("counted")["last_error"]
    u.wait_state("restarter", "ready", nth=2)
    assert len(starts(u, "restarter")) >= 2
    u.wait_out("restarter: error rule 'please restart' (restart)")   # stdout is not ordered with events
    assert "restarter: error rule 'please restart' (restart)" in u.out
    u.wait_out("warner: error rule '^WARNING' (warn)")
    assert "have a look" in u.out
    u.wait_state("warner", "ready")   # the rule's message can come before the marker's ready
    evs = [e for e in u.events() if e.get("service") == "warner"]
    rule_evs = [e for e in evs if e.get("message", "").startswith("error rule")]
    assert [e["state"] for e in evs if e not in rule_evs] == ["starting", "starting", "ready"]
    # qasup's words about a rule go to its output and the events, never into the service's log file
    assert [e["message"] for e in rule_evs] == ["error rule '^WARNING' (warn) matched: WARNING: disk nearly full"]
    assert u.log("warner") == b"up\nWARNING: disk nearly full\n"
    assert u.service_status("warner")["state"] == "ready"
    assert u.proc.poll() is None
    assert u.stop() == 0


@together
def test_restart_policies(stack, up):
    stack.unit("always", command=["sh", "-c", "echo run; sleep 0.1; exit 0"], restart={"policy": "always", **FAST})
    stack.unit("onfail-ok", command=["sh", "-c", "sleep 0.1; exit 0"], restart={"policy": "on-failure", **FAST})
    stack.unit("onfail-bad", command=["sh", "-c", "sleep 0.1; exit 4"],
               restart={"policy": "on-failure", **FAST, "max_restarts": 1})
    stack.unit("never", command=["sh", "-c", "sleep 0.1; exit 4"], restart={"policy": "never", **FAST})
    u = up().start()
    u.wait_state("always", "starting", nth=3)
    u.wait_state("onfail-ok", "stopped")
    u.wait_state("onfail-bad", "failed")
    u.wait_state("never", "failed")
    assert len(starts(u, "onfail-ok")) == 1
    assert len(starts(u, "onfail-bad")) == 2
    assert len(starts(u, "never")) == 1
    assert u.service_status("always")["restarts"] >= 2
    assert u.stop() == 0


def test_crash_loop_follows_backoff_then_gives_up_and_stack_goes_on_degraded(stack, up):
    stack.unit("loop", command=["sh", "-c", "exit 1"],
               restart={"policy": "on-failure", "delay": "100ms", "max_delay": "400ms", "max_restarts": 4,
                        "window": "1m"})
    stack.unit("needs-loop", command=SLEEP, requires=["loop"])
    stack.unit("fine", command=SLEEP)
    u = up().start()
    failed = u.wait_state("loop", "failed", timeout=10)
    assert "gave up after 4 restarts" in failed["message"]
    s = starts(u, "loop")
    assert len(s) == 5
    gaps = [b - a for a, b in zip(s, s[1:])]
    for gap, want in zip(gaps, (0.1, 0.2, 0.4, 0.4)):
        assert want * 0.9 <= gap <= want * 1.1 + 0.25, (gaps, want)
    dep = u.wait_state("needs-loop", "failed")
    assert "loop" in dep["message"]
    u.wait_state("fine", "ready")
    time.sleep(0.1)
    code, doc = u.status()
    assert code == 3 and doc["stack"]["state"] == "degraded"
    assert {x["name"]: x["state"] for x in doc["services"]}["fine"] == "ready"
    assert u.proc.poll() is None
    assert u.stop() == 0


@together
def test_give_up_abort_exits_1(stack, up):
    stack.unit("loop", command=["sh", "-c", "exit 2"],
               restart={"policy": "always", "delay": "50ms", "max_restarts": 2, "on_give_up": "abort"})
    stack.unit("fine", command=SLEEP)
    u = up().start()
    assert u.wait(10) == 1
    assert "gave up after 2 restarts" in u.out
    assert len(starts(u, "loop")) == 3


def test_backoff_resets_after_reset_after_ready(stack, up):
    stack.unit("flaky", command=["sh", "-c", "echo ok; sleep 0.3; exit 1"], ready={"log": "ok"},
               restart={"policy": "on-failure", "delay": "50ms", "max_delay": "5s", "reset_after": "200ms",
                        "max_restarts": 2, "window": "1m"})
    u = up().start()
    u.wait_state("flaky", "starting", nth=5, timeout=10)
    s = starts(u, "flaky")
    gaps = [b - a for a, b in zip(s, s[1:])]
    # ready 0.3 s > reset_after each time: the delay stays 50 ms and the counter never reaches max_restarts
    assert all(0.3 <= g < 0.3 + 0.05 * 1.1 + 0.2 for g in gaps), gaps
    assert "failed" not in u.states("flaky")
    assert u.stop() == 0
