"""``qasup up``'s start-up order (issue 16): what is not on the way to the first spawn is not imported before
it, and the control socket is still bound, and a clash reported, before any service starts.

* the control server (h11, the HTTP layer, the routes, /metrics) is imported only once the first wave's
  spawns are reported; the socket is bound before the engine starts (`control/listen.bind_api`);
* QAnything's rules (and :mod:`decimal`) only for a stack that uses them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from enginehelp import Stack, Up, poll, stack, up  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
LATE = ("h11", "supervisor.control.server", "supervisor.control.http", "supervisor.control.routes",
        "supervisor.control.metrics", "supervisor.plan.qanything", "decimal")


def _loaded_after_plan_and_daemon_import(root: Path) -> list[str]:
    """What ``qasup up`` has imported once its plan is made and the daemon module loaded (what it runs then)."""
    code = ("import sys; from pathlib import Path; from supervisor.plan.pipeline import PlanRequest, load_plan; "
            f"plan = load_plan(PlanRequest(config=Path({str(root / 'qasup.toml')!r}))); "
            "import supervisor.daemon; "
            f"print(' '.join(m for m in {LATE!r} if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT), QASUP_GPUS="none")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                          env=env).stdout.split()


def test_the_api_server_and_qanything_rules_are_not_imported_on_the_way_to_the_first_spawn(stack):
    stack.stack(name="plain")
    stack.unit("a", command=["sleep", "1"])
    assert _loaded_after_plan_and_daemon_import(stack.root) == []
    (stack.root / "qasup.toml").write_text('[stack]\nname = "plain"\n[plan]\nllm_api = "cloud"\n')
    # a [plan] table: QAnything's rules apply, and are loaded then
    assert _loaded_after_plan_and_daemon_import(stack.root) == ["supervisor.plan.qanything", "decimal"]


def test_a_socket_clash_is_reported_before_any_service_starts(stack, up, tmp_path):
    started = tmp_path / "started"
    stack.unit("a", command=["sh", "-c", f"touch {started}; exec sleep 300"])
    sock_path = tmp_path / ".qasup" / "qasup.sock"
    sock_path.parent.mkdir(mode=0o700)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)   # something that answers there: a live daemon
    other.bind(str(sock_path))
    other.listen(8)
    try:
        u = up().start("--no-echo")
        assert u.wait() == 2, u.out
        assert f"qasup: control socket: a qasup daemon is already answering on {sock_path}" in u.out
        assert not started.exists(), "a service ran before the clash was found"
        assert not [e for e in u.events() if "pid" in e]
        assert sock_path.exists()   # not ours: left alone
    finally:
        other.close()


def test_the_api_answers_right_after_the_first_spawn(stack, up):
    stack.unit("a", command=["sh", "-c", "echo up; exec sleep 300"], ready={"log": "up"})
    u = up().start("--no-echo")
    sock = u.state_dir / "qasup.sock"
    poll(sock.exists, 10, lambda: f"the socket; output:\n{u.out}")
    code, doc = u.status()        # may connect before the server runs: it waits in the backlog, then is answered
    assert code in (0, 1) and doc is not None, (code, u.out)
    assert [s["name"] for s in doc["services"]] == ["a"]
    u.wait_state("a", "ready")
    assert u.stop() == 0
    assert not sock.exists()      # removed by the server that took it over


def test_the_api_is_served_even_while_no_service_gets_a_pid(stack, up):
    """A first service still in its [prepare] step (starting, no pid yet): the API does not wait for it."""
    stack.unit("a", command=["sleep", "300"], prepare={"command": ["sleep", "30"]})
    u = up().start("--no-echo")
    sock = u.state_dir / "qasup.sock"
    poll(sock.exists, 10, lambda: f"the socket; output:\n{u.out}")
    t0 = time.monotonic()
    code, doc = u.status()
    assert doc is not None, (code, u.out)
    assert time.monotonic() - t0 < 5
    assert doc["services"][0]["state"] == "preparing" and doc["services"][0]["pid"] is None
    assert u.stop() == 0
    assert not sock.exists()


def test_a_stack_stopped_before_the_api_is_served_leaves_no_socket(stack, up):
    """SIGTERM at once: whether or not the server had taken the socket over, the file goes with the daemon."""
    stack.unit("a", command=["sleep", "300"], prepare={"command": ["sleep", "30"]})
    u = up().start("--no-echo")
    sock = u.state_dir / "qasup.sock"
    poll(sock.exists, 10, lambda: f"the socket; output:\n{u.out}")
    assert u.stop() == 0, u.out
    assert not sock.exists()
