"""``qasup up`` starting a stack: process set-up, prepare, event-driven start order, readiness, banner.

Every test drives ``qasup up`` as a subprocess and reads only what a user sees: events.jsonl, log files,
``qasup status --json``, stdout and the exit code.
"""

from __future__ import annotations

import json
import os

from enginehelp import PY, free_port, poll, stack, standin, together, together_alone, together_results, up  # noqa: F401  (fixtures)

GPUS = json.dumps([{"index": i, "name": "RTX 4090", "memory_total_mib": 24564, "memory_free_mib": 24000,
                    "compute_capability": "8.9"} for i in range(2)])
SLEEP = ["sh", "-c", "echo up; exec sleep 100"]


@together
def test_service_gets_its_own_session_argv_cwd_env_and_gpu(stack, up, tmp_path):
    work = tmp_path / "work dir"
    work.mkdir()
    for name, role in (("emb", "embed"), ("llm", "llm"), ("every", "all")):
        stack.unit(name, command=[PY, standin("svc_report.py"), "a b", "${GREETING}", "--x=$HOME"],
                   cwd="work dir", gpu=role,
                   env={"GREETING": "hi there", "REPORT": str(tmp_path / f"{name}.json"),
                        "REPORT_VARS": "GREETING,CUDA_VISIBLE_DEVICES,QASUP_SERVICE,FROM_FILE"},
                   env_files=["svc.env"], ready={"log": "report written", "timeout": "10s"})
    (tmp_path / "svc.env").write_text("FROM_FILE=from the file\n")
    u = up().start("--gpus", GPUS, "-i", "0,1", "-p", "1")
    u.wait_out("services ready")
    reports = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("emb", "llm", "every")}
    me = os.getpid()
    for name, r in reports.items():
        assert r["argv"] == ["a b", "hi there", "--x=$HOME"]  # expansion never splits, no shell
        assert os.path.realpath(r["cwd"]) == os.path.realpath(work)
        assert r["pgid"] == r["pid"] and r["sid"] == r["pid"], "each service leads its own session"
        assert r["ppid"] == u.proc.pid
        assert r["env"]["GREETING"] == "hi there" and r["env"]["FROM_FILE"] == "from the file"
        assert r["env"]["QASUP_SERVICE"] == name
        assert r["pid"] != me
    assert reports["emb"]["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert reports["llm"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert reports["every"]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    sids = {r["sid"] for r in reports.values()}
    assert len(sids) == 3
    code, doc = u.status()
    assert code == 0 and doc["stack"]["state"] == "ready"
    assert {s["name"]: s["pid"] for s in doc["services"]} == {n: r["pid"] for n, r in reports.items()}
    assert {s["name"]: s["gpu"] for s in doc["services"]}["every"] == "0,1"
    assert u.stop() == 0


@together
def test_prepare_runs_first_and_when_changed_skips_it(stack, up, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    counter = tmp_path / "prepared"
    prep = f'echo run >> "{counter}"; test -e "{tmp_path}/fail-prepare" && exit 3; echo prepared-ok'
    stack.unit("svc", command=["sh", "-c", f'test -s "{counter}" && echo started; exec sleep 100'],
               prepare={"command": ["sh", "-c", prep], "when_changed": ["src"], "timeout": "10s"},
               ready={"log": "^started$", "timeout": "5s"}, restart={"policy": "never"})

    outs: list[str] = []

    def run_once() -> tuple[int, list[str]]:
        u = up().start()
        u.wait_out("services ready", 15)
        states = u.states("svc")
        assert u.stop() == 0
        outs.append(u.out)
        return len(counter.read_text().splitlines()) if counter.exists() else 0, states

    runs, states = run_once()
    assert runs == 1
    assert states[:3] == ["preparing", "starting", "starting"] or states[:2] == ["preparing", "starting"]
    assert b"prepared-ok" in (tmp_path / "logs" / "svc.log").read_bytes()
    assert "svc: prepare: sh -c" in outs[-1]
    runs, _ = run_once()
    assert runs == 1, "unchanged when_changed paths: prepare skipped"
    assert "svc: prepare skipped" in outs[-1], "qasup's own words go to its output"
    assert b"prepare" not in (tmp_path / "logs" / "svc.log").read_bytes().replace(b"prepared-ok", b""), \
        "the log file holds the service's bytes only"
    (src / "a.txt").write_text("two")
    (tmp_path / "fail-prepare").write_text("")
    u = up().start()
    u.wait_state("svc", "failed")
    ev = u.first("svc", "failed")
    assert "prepare exited 3" in ev["message"]
    assert u.stop() == 0
    assert len(counter.read_text().splitlines()) == 2
    (tmp_path / "fail-prepare").unlink()
    runs, _ = run_once()
    assert runs == 3, "a failed prepare stores no hash: it runs again next time"
    runs, _ = run_once()
    assert runs == 3


def test_start_is_event_driven_and_parallel(stack, up):
    # a (0.4 s to ready) -> b requires a;  c independent;  d after x (disabled) and after f (fails)
    stack.unit("a", command=["sh", "-c", "sleep 0.4; echo ready-a; exec sleep 100"],
               ready={"log": "ready-a", "timeout": "5s"})
    stack.unit("b", command=SLEEP, requires=["a"])
    stack.unit("c", command=["sh", "-c", "sleep 0.3; echo ready-c; exec sleep 100"],
               ready={"log": "ready-c", "timeout": "5s"})
    stack.unit("e", command=SLEEP, requires=["a", "c"])
    stack.unit("x", command=SLEEP, enabled=False)
    stack.unit("f", command=SLEEP, ready={"log": "never printed", "timeout": "300ms"},
               restart={"policy": "never"})
    stack.unit("d", command=SLEEP, after=["x", "f"])
    u = up().start()
    u.wait_state("e", "ready")
    u.wait_state("d", "ready")
    ts = {}
    for n in "abcdef":
        ts[n + ".start"] = u.wait_state(n, "starting")["ts"]
    ts["a.ready"] = u.first("a", "ready")["ts"]
    ts["c.ready"] = u.first("c", "ready")["ts"]
    ts["f.failed"] = u.first("f", "failed")["ts"]
    # independent services start together
    assert abs(ts["a.start"] - ts["c.start"]) < 0.2
    assert abs(ts["a.start"] - ts["f.start"]) < 0.2
    # b starts the moment a is ready (not a polling period later), e when the later of a and c is ready
    assert 0 <= ts["b.start"] - ts["a.ready"] < 0.25
    assert 0 <= ts["e.start"] - max(ts["a.ready"], ts["c.ready"]) < 0.25
    assert ts["e.start"] > ts["a.ready"] and ts["e.start"] > ts["c.ready"]
    # after = ordering only: d starts once f failed, x being disabled
    assert 0 <= ts["d.start"] - ts["f.failed"] < 0.25
    assert u.states("x") == []
    assert u.service_status("x")["state"] == "disabled"
    assert u.stop() == 0
    # each service started exactly once
    for n in "abcde":
        assert sum(1 for e in u.events() if e.get("service") == n and e["state"] == "starting"
                   and e.get("prev") != "starting") == 1


def test_readiness_http_tcp_exec_log_tail_and_modes(stack, up, tmp_path):
    p1, p2, p3 = free_port(), free_port(), free_port()
    stack.unit("web", command=[PY, standin("svc_http.py"), str(p1), "--delay", "0.3", "--body", "model-x ok"],
               ready={"http": {"url": f"http://127.0.0.1:{p1}/models", "method": "POST", "expect": "model-x"},
                      "interval": "100ms", "timeout": "10s"})
    stack.unit("wrongbody", command=[PY, standin("svc_http.py"), str(p2), "--body", "other"],
               ready={"http": {"url": f"http://127.0.0.1:{p2}/models", "method": "POST", "expect": "model-x"},
                      "interval": "100ms", "timeout": "1500ms"}, restart={"policy": "never"})
    stack.unit("tcp", command=[PY, standin("svc_http.py"), str(p3), "--delay", "0.2"],
               ready={"tcp": f"127.0.0.1:{p3}", "interval": "100ms", "timeout": "10s"})
    flag = tmp_path / "flag"
    stack.unit("ex", command=["sh", "-c", f'sleep 0.3; touch "{flag}"; exec sleep 100'],
               ready={"exec": ["test", "-e", str(flag)], "interval": "100ms", "timeout": "10s"})
    tail = tmp_path / "logs" / "own" / "worker.log"
    stack.unit("tailer", command=["sh", "-c", f'mkdir -p "{tail.parent}"; sleep 0.2; echo "worker booted" >> "{tail}";'
                                  " exec sleep 100"],
               log={"tail": [str(tail)]}, ready={"log": "worker booted", "timeout": "10s"})
    # any: the log marker comes, the tcp port never opens
    stack.unit("anyof", command=["sh", "-c", "echo hello-any; exec sleep 100"],
               ready={"log": "hello-any", "tcp": f"127.0.0.1:{free_port()}", "mode": "any", "timeout": "5s"})
    # all: the log marker comes, the exec never passes -> a failed start
    stack.unit("allof", command=["sh", "-c", "echo hello-all; exec sleep 100"],
               ready={"log": "hello-all", "exec": ["false"], "mode": "all", "timeout": "1s", "interval": "100ms"},
               restart={"policy": "never"})
    stack.unit("noready", command=SLEEP)
    u = up().start()
    for n in ("web", "tcp", "ex", "tailer", "anyof", "noready"):
        u.wait_state(n, "ready")
    u.wait_state("wrongbody", "failed")
    u.wait_state("allof", "failed")
    assert "not ready within 1.5s" in u.first("wrongbody", "failed")["message"]
    assert "model-x" in u.first("wrongbody", "failed")["message"]
    assert "not ready within 1s" in u.first("allof", "failed")["message"]
    web_start, web_ready = u.first("web", "starting")["ts"], u.first("web", "ready")["ts"]
    assert 0.3 <= web_ready - web_start < 1.5
    ex_ready = u.first("ex", "ready")["ts"] - u.first("ex", "starting")["ts"]
    assert 0.3 <= ex_ready < 1.5
    assert u.first("tailer", "ready")["ts"] - u.first("tailer", "starting")["ts"] >= 0.2
    doc = u.service_status("wrongbody")
    assert doc["state"] == "failed" and "not ready" in doc["last_error"]
    code, st = u.status()
    assert code == 3 and st["stack"]["state"] == "degraded"
    assert u.stop() == 0


@together
def test_banner_and_time_printed_when_all_ready(stack, up):
    stack.stack(banner="Please visit http://${USER_IP}:8777/qanything/ now", name="demo")
    stack.unit("a", command=["sh", "-c", "sleep 0.2; echo go; exec sleep 100"], ready={"log": "go"})
    stack.unit("b", command=SLEEP, requires=["a"])
    u = up().start(env={"USER_IP": "10.1.2.3"})
    u.wait_out("services ready in")
    out = u.out
    assert "Please visit http://10.1.2.3:8777/qanything/ now" in out
    assert "all 2 services ready in" in out
    assert out.index("a | go") < out.index("Please visit") < out.index("services ready in")
    assert out.count("Please visit") == 1
    assert "a | go" in out
    assert u.stop() == 0


@together
def test_marker_left_in_a_tailed_file_by_an_earlier_run_does_not_count(stack, up, tmp_path):
    tail = tmp_path / "own.log"
    tail.write_text("worker booted (yesterday)\n")          # an earlier run's marker
    stack.unit("tailer", command=["sh", "-c", f'sleep 0.4; echo "worker booted" >> "{tail}"; exec sleep 100'],
               log={"tail": [str(tail)]}, ready={"log": "worker booted", "timeout": "10s"})
    u = up().start()
    ready = u.wait_state("tailer", "ready")
    assert ready["ts"] - u.first("tailer", "starting")["ts"] >= 0.4
    assert u.stop() == 0
