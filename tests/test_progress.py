"""Progress while the stack starts: the ``[qasup] waiting: ...`` lines of ``qasup up`` (with the probes' own
reasons and what a service waits for), the status JSON's ``waiting_on`` and the LAST ERROR column, and
``qasup status --watch`` drawn in place under a real pty until Ctrl-C."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time

from enginehelp import PY, poll, stack, together, together_alone, together_results, up  # noqa: F401  (fixtures)

# a service that prints its ready marker only once the test lets it (the file GO appears)
SLOW = ("import os, sys, time\n"
        "while not os.path.exists('GO'): time.sleep(0.02)\n"
        "print('Started HTTPService', flush=True)\n"
        "time.sleep(600)\n")


def _slow_stack(stack) -> None:
    stack.unit("slow", command=[PY, "-c", SLOW], ready={"log": "Started HTTPService", "timeout": "60s"})
    stack.unit("web", command=["sleep", "600"], requires=["slow"])


def _waiting_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("[qasup] waiting: ")]


@together
def test_progress_lines_name_the_probe_reason_and_the_dependency_then_stop(stack, up, tmp_path) -> None:
    _slow_stack(stack)
    u = up().start()
    poll(lambda: _waiting_lines(u.out), 10, lambda: f"a progress line; output:\n{u.out}")
    line = _waiting_lines(u.out)[0]
    assert re.search(r"slow \d+(\.\d)?s/60s: no line matching 'Started HTTPService' yet", line), line
    assert "web: waiting for slow (starting)" in line, line
    # status says the same, in the JSON and in the table's LAST ERROR column
    _, doc = u.status()
    assert doc is not None
    rows = {s["name"]: s for s in doc["services"]}
    assert rows["slow"]["state"] == "starting"
    assert "no line matching 'Started HTTPService' yet" in rows["slow"]["waiting_on"]
    assert rows["web"]["waiting_on"] == "waiting for slow (starting)"
    table = subprocess.run([PY, "-m", "supervisor", "status"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=20)
    assert table.returncode == 3
    assert re.search(r"^slow\s+starting .*no line matching 'Started HTTPService' yet", table.stdout, re.M), table.stdout
    (tmp_path / "GO").touch()
    u.wait_out("all 2 services ready")
    ready_at = time.monotonic()
    _, doc = u.status()
    assert doc is not None and [s["waiting_on"] for s in doc["services"]] == [None, None]
    out = u.out
    assert out.rindex("[qasup] waiting: ") < out.index("all 2 services ready")
    # a line at a state change would come within a second; none does once all is ready
    while time.monotonic() < ready_at + 1.2:
        time.sleep(0.1)
    assert u.out.count("[qasup] waiting: ") == out.count("[qasup] waiting: "), u.out
    assert u.stop() == 0


@together
def test_a_fast_stack_prints_no_progress_line(stack, up) -> None:
    stack.unit("a", command=["sleep", "600"])
    stack.unit("b", command=["sleep", "600"], requires=["a"])
    u = up().start()
    u.wait_out("all 2 services ready")
    assert u.stop() == 0
    assert not _waiting_lines(u.out), u.out


def _read_until(fd: int, pred, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while not pred(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; the pty showed: {got[-2000:]!r}")
        r, _, _ = select.select([fd], [], [], min(left, 0.2))
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:   # EIO: the other side closed
                break
            if not chunk:
                break
            got += chunk
    return got


def _drain(fd: int) -> bytes:
    """What is left to read on the pty once the program has exited."""
    got = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return got


def test_status_watch_redraws_in_place_under_a_pty_and_ends_quietly_on_ctrl_c(stack, up, tmp_path) -> None:
    _slow_stack(stack)
    u = up().start()
    u.wait_state("slow", "starting")
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "QASUP_SOCKET"}
    # SIGINT back to its default in the child: a test run started in the background by a non-interactive shell
    # (`.ci/run &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all
    proc = subprocess.Popen([PY, "-m", "supervisor", "status", "--watch"], cwd=tmp_path, env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    try:
        clear = b"\x1b[H\x1b[2J"
        seen = _read_until(master, lambda b: b.count(clear) >= 1 and b"slow" in b.split(clear)[-1], 15)
        assert re.search(rb"slow\s+\S*starting", seen), seen
        (tmp_path / "GO").touch()
        # redrawn in place: a later frame shows both services ready
        seen += _read_until(master, lambda b: b"2/2 services ready" in b.split(clear)[-1]
                            and b"(every 1s" in b.split(clear)[-1], 15)
        assert seen.count(clear) >= 2
        os.killpg(proc.pid, signal.SIGINT)
        # keep reading while it exits, as a terminal does (a pty nobody reads would fill up and block its writes)
        seen += _read_until(master, lambda b: proc.poll() is not None, 15)
        assert proc.wait(5) == 130
        seen += _drain(master)
        assert b"Traceback" not in seen and b"KeyboardInterrupt" not in seen, seen[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert u.stop() == 0


@together
def test_a_progress_line_names_at_most_twelve_services_and_counts_the_rest(stack, up) -> None:
    """1000 starting services must not make a 60 KB progress line: twelve are named, the rest counted."""
    for i in range(15):
        stack.unit(f"s{i:02d}", command=["sleep", "600"], ready={"log": "never printed", "timeout": "60s"})
    u = up().start()
    poll(lambda: _waiting_lines(u.out), 10, lambda: f"a progress line; output:\n{u.out}")
    line = _waiting_lines(u.out)[0]
    named = re.findall(r"\bs\d\d \d+(?:\.\d)?s/60s: no line matching 'never printed' yet", line)
    assert len(named) == 12, line
    assert line.endswith("; and 3 more (qasup status)"), line
    assert u.stop() == 0
