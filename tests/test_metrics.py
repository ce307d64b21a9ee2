"""``/metrics`` (supervisor.control.metrics): the Prometheus text format, read back with prometheus_client's own
parser, checked against promtool's naming lints, and scraped from a real ``qasup up`` on the Unix socket, on
``--listen`` (with its token) and on the read-only ``--http`` listener.

The lints checked here are those of ``promtool check metrics`` (its ``promlint`` package): every family has
HELP and TYPE; names are snake_case (no camelCase, no colon) with the ``qasup_`` prefix; counters end in
``_total`` and nothing else does; units are base units written as a suffix (``_seconds``, ``_bytes``, never
``_milliseconds``, ``_kilobytes``, ...); no reserved suffix (``_count``, ``_sum``, ``_bucket``, ``_created``,
``_info`` only for gauges of 1); label names snake_case; each family's lines are contiguous and its samples
unique. When a ``promtool`` binary is on PATH it is run too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from supervisor.control import client
from supervisor.control.metrics import CONTENT_TYPE, Observed, escape_label, render_metrics
from supervisor.control.refusals import Refusals
from supervisor.engine.counters import ServiceCounters
from supervisor.logs.echo import Echo
from supervisor.logs.rotate import LogCounts, RotatingFile
from supervisor.protocol import ServiceState, StackState, service_status, stack_status

from enginehelp import PY, free_port, poll, stack, together, together_alone, together_results, up  # noqa: F401  (stack, up: fixtures)

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client is in the test extras "
                             "(pip install -e '.[test]')")

GPUS = [{"index": 0, "name": 'RTX "4090" \\ test', "memory_total_mib": 24564, "memory_free_mib": 24000,
         "compute_capability": "8.9"},
        {"index": 1, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564, "memory_free_mib": 100,
         "compute_capability": "8.9"}]
TOKEN = "metrics-token-0123456789"


# --------------------------------------------------------------------------- helpers


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict[tuple, float]:
    """The samples called ``name``, keyed by their sorted label pairs."""
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


_UNIT_WORDS = ("seconds", "bytes", "lines", "ratio", "celsius", "volts", "amperes", "joules", "grams", "meters")
_NON_BASE = re.compile(r"_(milli|micro|nano|kilo|mega|giga|tera)?(seconds|bytes)(?<!_seconds)(?<!_bytes)|"
                       r"_(ms|us|ns|msec|millis|minutes|hours|days|kb|mb|gb|kib|mib|gib|percent)(_|$)")


def lint(text: str) -> list[str]:
    """promtool check metrics' lints (promlint), as listed in the module's docstring; [] when clean."""
    problems: list[str] = []
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    order: list[str] = []
    seen_samples: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            if name in helps:
                problems.append(f"{name}: HELP twice")
            helps[name] = help_text
            if not help_text.strip():
                problems.append(f"{name}: empty HELP")
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            if name in types:
                problems.append(f"{name}: TYPE twice")
            if name not in helps:
                problems.append(f"{name}: TYPE without a HELP before it")
            types[name] = kind
            order.append(name)
        elif line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            if not order or name != order[-1]:
                problems.append(f"{name}: sample outside its family's block (after {order[-1:]})")
            key = line.rsplit(" ", 1)[0]
            if key in seen_samples:
                problems.append(f"duplicate sample {key}")
            seen_samples.add(key)
            for label in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', line.partition("{")[2]):
                if not re.fullmatch(r"[a-z][a-z0-9_]*", label):
                    problems.append(f"{name}: label {label!r} is not snake_case")
    for name, kind in types.items():
        if not re.fullmatch(r"qasup_[a-z][a-z0-9_]*", name):
            problems.append(f"{name}: not snake_case with the qasup_ prefix")
        if kind == "counter" and not name.endswith("_total"):
            problems.append(f"{name}: counter names end in _total")
        if kind != "counter" and name.endswith("_total"):
            problems.append(f"{name}: only counters end in _total")
        if kind not in ("counter", "gauge"):
            problems.append(f"{name}: unexpected type {kind}")
        for suffix in ("_count", "_sum", "_bucket", "_created"):
            if name.endswith(suffix):
                problems.append(f"{name}: reserved suffix {suffix}")
        if _NON_BASE.search(name):
            problems.append(f"{name}: use base units (seconds, bytes) as the suffix")
        stem = name[:-6] if name.endswith("_total") else name
        for unit in ("seconds", "bytes"):
            if unit in stem.split("_") and not stem.endswith("_" + unit):
                problems.append(f"{name}: the unit {unit} belongs at the end of the name")
    return problems


def make_status() -> dict:
    rows = [
        service_status(name="web", state="ready", pid=10, restarts=2, uptime_s=40.0, ready_after_s=1.25,
                       exit_code=3, last_error=None, state_since=960.0, ready_timeout_s=120.0,
                       counters={"log_bytes": 1234, "log_dropped_bytes": 7,
                                 "rule_matches": {'CUDA "out" of\\memory\nx': 3, "Traceback": 0},
                                 "live_failures": 1}),
        service_status(name="llm", state="starting", pid=11, uptime_s=5.0, ready_timeout_s=300.0,
                       counters={"last_exit_code": 137}),   # killed by SIGKILL last time, running again now
        service_status(name="ocr", state="disabled"),
    ]
    stack = stack_status(state="starting", pid=1, uptime_s=100.0, name='qa "stack"')
    stack["time"] = 1000.0
    return {"stack": stack, "services": rows}


# --------------------------------------------------------------------------- the format


def test_every_family_parses_with_the_values_of_the_status() -> None:
    observed = Observed(plan=lambda: {"gpus": GPUS}, events_total=lambda: 42, echo_dropped=lambda: {"llm": 5},
                        api_refused=lambda: {"connection_limit": 3, "idle_shed": 0})
    text = render_metrics(make_status(), observed, {"rss": 25 << 20, "cpu": 1.5, "fds": 17})
    fams = families(text)
    # counters lose their _total in the parsed family name (prometheus_client's own reading of 0.0.4)
    assert {"qasup_service_up", "qasup_service_state", "qasup_service_restarts", "qasup_service_start_time_seconds",
            "qasup_service_ready_seconds", "qasup_service_last_exit_code", "qasup_service_log_bytes",
            "qasup_service_log_dropped_bytes", "qasup_service_echo_dropped_lines", "qasup_service_rule_matches",
            "qasup_service_live_failures", "qasup_stack_ready", "qasup_stack_state", "qasup_stack_services",
            "qasup_process_resident_memory_bytes", "qasup_process_cpu_seconds", "qasup_process_open_fds",
            "qasup_events", "qasup_gpu_memory_total_bytes", "qasup_gpu_memory_free_bytes"} <= set(fams)
    assert fams["qasup_service_restarts"].type == "counter" and fams["qasup_service_up"].type == "gauge"
    assert samples(text, "qasup_service_up") == {(("service", "web"),): 1, (("service", "llm"),): 0,
                                                 (("service", "ocr"),): 0}
    state = samples(text, "qasup_service_state")
    assert len(state) == 3 * len(ServiceState)
    assert {k for k, v in state.items() if v == 1} == {(("service", "web"), ("state", "ready")),
                                                       (("service", "llm"), ("state", "starting")),
                                                       (("service", "ocr"), ("state", "disabled"))}
    assert samples(text, "qasup_service_restarts_total")[(("service", "web"),)] == 2
    assert samples(text, "qasup_service_start_time_seconds") == {(("service", "web"),): 960.0,
                                                                 (("service", "llm"),): 995.0}
    assert samples(text, "qasup_service_ready_seconds") == {(("service", "web"),): 1.25}   # only while ready
    assert samples(text, "qasup_service_last_exit_code") == {(("service", "web"),): 3, (("service", "llm"),): 137}
    assert samples(text, "qasup_service_log_bytes_total")[(("service", "web"),)] == 1234
    assert samples(text, "qasup_service_log_dropped_bytes_total")[(("service", "web"),)] == 7
    assert samples(text, "qasup_service_echo_dropped_lines_total") == {
        (("service", "web"),): 0, (("service", "llm"),): 5, (("service", "ocr"),): 0}
    # a pattern with a quote, a backslash and a newline comes back exactly (escaped in the text)
    assert samples(text, "qasup_service_rule_matches_total") == {
        (("rule", 'CUDA "out" of\\memory\nx'), ("service", "web")): 3, (("rule", "Traceback"), ("service", "web")): 0}
    assert 'rule="CUDA \\"out\\" of\\\\memory\\nx"' in text
    assert samples(text, "qasup_service_live_failures_total")[(("service", "web"),)] == 1
    assert samples(text, "qasup_stack_ready") == {(): 0}
    assert {k for k, v in samples(text, "qasup_stack_state").items() if v} == {(("state", "starting"),)}
    assert len(samples(text, "qasup_stack_state")) == len(StackState)
    by_state = samples(text, "qasup_stack_services")
    assert by_state[(("state", "ready"),)] == 1 and by_state[(("state", "failed"),)] == 0
    assert sum(by_state.values()) == 3
    assert samples(text, "qasup_stack_info") == {(("stack", 'qa "stack"'),): 1}
    assert samples(text, "qasup_process_resident_memory_bytes") == {(): 25 << 20}
    assert samples(text, "qasup_process_cpu_seconds_total") == {(): 1.5}
    assert samples(text, "qasup_process_open_fds") == {(): 17}
    assert samples(text, "qasup_process_start_time_seconds") == {(): 900.0}
    assert samples(text, "qasup_events_total") == {(): 42}
    assert samples(text, "qasup_api_refused_total") == {(("reason", "connection_limit"),): 3,
                                                        (("reason", "idle_shed"),): 0}
    assert fams["qasup_api_refused"].type == "counter"
    assert samples(text, "qasup_gpu_memory_total_bytes") == {
        (("index", "0"), ("name", 'RTX "4090" \\ test')): 24564 * 2**20,
        (("index", "1"), ("name", "NVIDIA GeForce RTX 4090")): 24564 * 2**20}
    assert samples(text, "qasup_gpu_memory_free_bytes")[(("index", "1"), ("name", "NVIDIA GeForce RTX 4090"))] \
        == 100 * 2**20


def test_names_pass_promtool_style_lints() -> None:
    text = render_metrics(make_status(), Observed(plan=lambda: {"gpus": GPUS}))
    assert lint(text) == []
    # the linter itself catches what it claims to
    bad = ("# HELP qasup_fooBar x\n# TYPE qasup_fooBar counter\nqasup_fooBar 1\n"
           "# HELP qasup_latency_milliseconds x\n# TYPE qasup_latency_milliseconds gauge\nqasup_latency_milliseconds 1\n"
           "# TYPE qasup_x_total gauge\nqasup_x_total 1\n")
    found = "\n".join(lint(bad))
    assert "not snake_case" in found and "end in _total" in found and "base units" in found
    assert "only counters end in _total" in found and "without a HELP" in found


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (the lints above stand in)")
def test_promtool_check_metrics() -> None:
    text = render_metrics(make_status(), Observed(plan=lambda: {"gpus": GPUS}))
    r = subprocess.run(["promtool", "check", "metrics"], input=text, text=True, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_log_counts_span_files_and_count_what_a_full_disk_drops(tmp_path: Path) -> None:
    counts = LogCounts()
    log = RotatingFile(tmp_path / "a.log", 100, 3, counts=counts)
    for i in range(50):
        log.write(b"line %03d\n" % i)   # rotates several times: every byte counted once
    log.close()
    again = RotatingFile(tmp_path / "b.log", 0, 0, counts=counts)   # a reload gave the service another file
    again.write(b"more\n")
    again.close()
    assert counts.written == 50 * 9 + 5 and counts.dropped == 0
    full = RotatingFile(Path("/dev/full"), 0, 0, counts=counts)
    full.write(b"x" * 1000)
    full.close()
    assert counts.dropped == 1000 and counts.written == 50 * 9 + 5


def test_service_counters() -> None:
    c = ServiceCounters(["ERR", "OOM"])
    c.rule_hit("ERR")
    c.rule_hit("ERR")
    c.live_failed(0, 3)   # a streak begins: one failure
    c.live_failed(3, 4)   # the same streak goes on
    c.live_failed(0, 3)   # after a recovery (or a new run): another
    c.exited(3)
    c.exited(None)        # a start that never ran keeps the last exit
    assert c.to_json() == {"log_bytes": 0, "log_dropped_bytes": 0, "rule_matches": {"ERR": 2, "OOM": 0},
                           "live_failures": 2, "last_exit_code": 3}


def test_echo_drops_reach_the_metrics() -> None:
    r, w = os.pipe()   # nobody reads r: the echo's queue fills and lines are dropped
    os.set_blocking(w, False)
    echo = Echo(fd=w, queue_chunks=2, queue_bytes=64)
    try:
        stream = echo.line_writer("web")
        for i in range(5000):
            stream.write(b"a line of output %d\n" % i)
        poll(lambda: echo.dropped.get("web", 0) > 0, 5, "echo drops")
        text = render_metrics({"stack": stack_status(state="ready", pid=1, uptime_s=1.0, name="s"),
                               "services": [service_status(name="web", state="ready")]},
                              Observed(echo_dropped=lambda: echo.dropped), {"cpu": 0.0})
        assert samples(text, "qasup_service_echo_dropped_lines_total")[(("service", "web"),)] == echo.dropped["web"]
    finally:
        echo.close(timeout=0.5)
        os.close(r)
        os.close(w)


def test_label_escaping() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape_label(3) == "3"


def test_an_empty_stack_and_missing_process_facts_still_parse() -> None:
    status = {"stack": stack_status(state="ready", pid=1, uptime_s=0.0, name="s"), "services": []}
    text = render_metrics(status, Observed(), {"cpu": 0.0})
    assert lint(text) == []
    fams = families(text)
    assert "qasup_service_up" not in fams and "qasup_gpu_memory_total_bytes" not in fams   # no empty families
    assert samples(text, "qasup_stack_ready") == {(): 1}


# --------------------------------------------------------------------------- from a real daemon


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def http_port(u) -> int:
    """The read-only listener's port, from the line qasup says when it listens."""
    line = poll(lambda: re.search(r"status page and /metrics on http://127\.0\.0\.1:(\d+)/", u.out), 20,
                lambda: f"the --http line; output:\n{u.out}")
    return int(line.group(1))


@together
def test_metrics_from_a_running_stack_on_every_listener(stack, up) -> None:
    # web is ready and prints a line an error rule matches (twice); crash exits 3 and is restarted
    stack.unit("web", command=[PY, "-c", "import sys,time\nprint('ready now', flush=True)\n"
                                            "print('WARN disk', flush=True)\nprint('WARN disk', flush=True)\n"
                                            "time.sleep(600)"],
                  ready={"log": "ready now"}, on_log=[{"match": "WARN", "action": "warn"},
                                                      {"match": "never printed", "action": "warn"}])
    stack.unit("crash", command=[PY, "-c", "import sys\nsys.exit(3)"],
                  restart={"policy": "on-failure", "delay": "50ms", "max_restarts": 1000})
    # sick fails its [live] check every round: declared failed once (the streak), warned, and stays ready
    stack.unit("sick", command=["sleep", "600"],
               live={"exec": ["false"], "interval": "100ms", "failures": 2, "action": "warn"})
    listen = free_port()
    u = up().start("--http", "127.0.0.1:0", "--listen", f"127.0.0.1:{listen}",
                 env={"QASUP_TOKEN": TOKEN, "QASUP_GPUS": json.dumps(GPUS)})
    u.wait_state("web", "ready", timeout=20)
    port = http_port(u)
    sock = u.state_dir / "qasup.sock"

    def scrape() -> str:
        status, body = client.request(sock, "GET", "/metrics", timeout=10)
        assert status == 200
        return body.decode()

    def settled() -> str | None:
        text = scrape()
        matches = samples(text, "qasup_service_rule_matches_total")
        restarts = samples(text, "qasup_service_restarts_total")[(("service", "crash"),)]
        live = samples(text, "qasup_service_live_failures_total")[(("service", "sick"),)]
        return text if matches.get((("rule", "WARN"), ("service", "web"))) == 2 and restarts >= 2 and live else None

    text = poll(settled, 20, lambda: f"2 WARN matches, 2 restarts of crash, a liveness failure of sick in:\n"
                                     f"{scrape()}", pause=0.1)
    time.sleep(0.5)   # several more failed rounds of sick: still one failure (one streak)
    text = scrape()
    assert samples(text, "qasup_service_live_failures_total")[(("service", "sick"),)] == 1
    assert samples(text, "qasup_service_up")[(("service", "sick"),)] == 1
    assert lint(text) == []
    assert samples(text, "qasup_service_up")[(("service", "web"),)] == 1
    assert samples(text, "qasup_service_rule_matches_total")[(("rule", "never printed"), ("service", "web"))] == 0
    assert samples(text, "qasup_service_last_exit_code")[(("service", "crash"),)] == 3
    log_bytes = samples(text, "qasup_service_log_bytes_total")[(("service", "web"),)]
    assert log_bytes >= len(b"ready now\nWARN disk\nWARN disk\n")
    assert log_bytes <= (u.root / "logs" / "web.log").stat().st_size   # what the file holds (no rotation here)
    assert samples(text, "qasup_service_log_dropped_bytes_total")[(("service", "web"),)] == 0
    web_start = samples(text, "qasup_service_start_time_seconds")[(("service", "web"),)]
    assert abs(web_start - time.time()) < 60
    assert 0 < samples(text, "qasup_service_ready_seconds")[(("service", "web"),)] < 20
    events = len(u.events())
    assert samples(text, "qasup_events_total")[()] <= events + 5 and samples(text, "qasup_events_total")[()] > 3
    assert samples(text, "qasup_process_resident_memory_bytes")[()] > 5 << 20
    assert samples(text, "qasup_process_open_fds")[()] > 3
    assert samples(text, "qasup_api_refused_total") == {(("reason", r),): 0 for r in Refusals.REASONS}
    assert samples(text, "qasup_gpu_memory_free_bytes")[(("index", "1"), ("name", "NVIDIA GeForce RTX 4090"))] \
        == 100 * 2**20

    # the same exposition on the read-only listener (no token) and on --listen (token required)
    code, headers, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200 and headers["Content-Type"] == CONTENT_TYPE
    assert "qasup_service_up" in families(body.decode())
    req = urllib.request.Request(f"http://127.0.0.1:{listen}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and "qasup_stack_services" in families(r.read().decode())
    assert http_get(f"http://127.0.0.1:{listen}/metrics")[0] == 401
    assert u.stop(20) == 0


@together
def test_an_idle_daemon_with_http_stays_idle(stack, up) -> None:
    stack.unit("idle", command=["sleep", "600"])
    u = up().start("--http", "127.0.0.1:0")
    u.wait_state("idle", "ready", timeout=20)
    port = http_port(u)
    assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    # what the status page holds open: the events stream (nothing flows while nothing changes)
    page = socket.create_connection(("127.0.0.1", port), timeout=10)
    page.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    assert page.recv(4096).startswith(b"HTTP/1.1 200")

    def ticks() -> int:
        fields = Path(f"/proc/{u.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])   # utime + stime

    # settled: no tick for a while after start-up (the machine may be busy; allow it time to quiet down)
    deadline = time.monotonic() + 15
    while True:
        before = ticks()
        time.sleep(1.0)
        idle = ticks() - before
        if idle == 0 or time.monotonic() > deadline:
            break
    assert idle == 0, f"the daemon used {idle} CPU ticks in 1 s of idling with --http on and a page connected"
    page.close()
    os.kill(u.proc.pid, signal.SIGTERM)
    assert u.wait(20) == 0
