"""One stack split across four machines on one box (issue 15): a network namespace per node, one ``qasup up
--only ...`` per namespace, as examples/kubernetes/ splits QAnything's stack into pods.

The namespaces, their links and their addresses are the test's own: a hub namespace holds a bridge, and each node
namespace has an ``eth0`` (a veth pair to the bridge) with an address of 10.77.0.0/24 and its loopback up. Nothing
is added to this machine's own network namespace, so test runs (unique names ``qm<pid>-NODE``) never collide.

    node    address      runs (--only)   waits on elsewhere (external)
    ctl     10.77.0.1    controller      -
    w1      10.77.0.11   worker          controller
    w2      10.77.0.12   worker          controller
    api     10.77.0.20   api             llm (the controller lists the model)

All four nodes share one services.d (tests/multinode/services.d) and differ only in their environment: the
controller's address ``FASTCHAT_CONTROLLER_ADDR`` and a worker's own ``FASTCHAT_WORKER_HOST``. The stand-ins
(tests/multinode/controller.py, worker.py) speak FastChat's controller API; the controller's worker table is lost
when it restarts, and a worker registers only at its start, so every re-registration seen here is qasup's doing.
Each node's qasup runs in its namespace through ``nsenter --net`` (only the network namespace changes: cgroups
and the file system are the host's, so the test reads each node's status over its control socket).

Skipped, with the reason, where network namespaces cannot be made (not root, no CAP_NET_ADMIN, no ``ip``).
It lives in the integration suite (``tests/integration/run.sh``, or ``QASUP_INTEGRATION=1 pytest
tests/integration/test_multinode.py``): four daemons started five times take 8-10 s on two quiet cores and up
to 24 s on busy ones (about 11 s of CPU), too long for the default suite. Nothing in it depends on that folder's
conftest: moved to tests/ it runs as it is.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

TESTS = next(p for p in Path(__file__).resolve().parents if (p / "multinode").is_dir())   # tests/
MULTINODE = TESTS / "multinode"
T = TypeVar("T")

SUBNET = "10.77.0"
CTL_ADDR = f"{SUBNET}.1:7800"
MODEL = "qm-chat"
EXPIRY = 0.8      # the controller drops a worker silent for this long (FastChat: 90 s)
PROBE = 0.1       # [live] interval of the units (tests/multinode/services.d); failures = 2
DEADLINE = 10.0   # seconds any one step may take


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def poll(what: str, fn: Callable[[], T | None], deadline: float = DEADLINE, why: Callable[[], str] = str) -> T:
    """``fn()`` once it is truthy, tried every 50 ms; fails after ``deadline`` seconds saying ``what`` and
    ``why()`` (what the nodes said)."""
    end = time.monotonic() + deadline
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline:g}s\n{why()}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- the network

class Net:
    """The hub namespace with its bridge, and one namespace per node linked to it."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.hub = f"{tag}-hub"
        self.names: list[str] = []

    def make(self) -> None:
        """The hub; skips the test where a namespace cannot be made."""
        if shutil.which("ip") is None or shutil.which("nsenter") is None:
            pytest.skip("network namespaces: needs the ip (iproute2) and nsenter (util-linux) programs")
        r = sh("ip", "netns", "add", self.hub, check=False)
        if r.returncode != 0:
            pytest.skip(f"network namespaces cannot be made here (needs root or CAP_NET_ADMIN): ip netns add: "
                        f"{r.stderr.strip()}")
        self.names.append(self.hub)
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")

    def node(self, name: str, addr: str) -> str:
        ns = f"{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        self.names.append(ns)
        sh("ip", "-n", self.hub, "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.hub, "link", "set", f"v-{name}", "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def link(self, ns: str, up: bool) -> None:
        sh("ip", "-n", ns, "link", "set", "eth0", "up" if up else "down")

    @staticmethod
    def pids(ns: str) -> list[int]:
        """Every process whose network namespace is ``ns``."""
        return [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()]

    def close(self, wait: float = 0.0) -> list[str]:
        """Kill what is left in the namespaces (after up to ``wait`` seconds for it to go by itself: the
        guardian of a SIGKILLed qasup), delete them; what was left and what could not be deleted."""
        end = time.monotonic() + wait
        while time.monotonic() < end and any(self.pids(ns) for ns in self.names):
            time.sleep(0.1)
        left = []
        for ns in self.names:
            for pid in self.pids(ns):
                left.append(f"{ns}: pid {pid}: {_cmdline(pid)}")
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for ns in reversed(self.names):
            sh("ip", "netns", "del", ns, check=False)
        there = set(sh("ip", "netns", "list", check=False).stdout.split())
        left += [f"namespace {ns} not deleted" for ns in self.names if ns in there]
        return left


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------------- the nodes

class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("qasup", timeout=3)
        self.unix_path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Node:
    """One machine: a folder with its qasup.toml (the shared services.d, its own state and logs), its
    namespace and the environment that tells it where the others are."""

    def __init__(self, root: Path, ns: str, only: str, env: dict[str, str]) -> None:
        self.root, self.ns, self.only = root, ns, only
        root.mkdir(parents=True)
        (root / "qasup.toml").write_text(
            f'[stack]\nname = "{root.name}"\nservices = "{MULTINODE / "services.d"}"\nstop_budget = "10s"\n')
        self.env = {**os.environ, "QASUP_GPUS": "none", "NO_COLOR": "1", "PYTHON": sys.executable,
                    "MULTINODE_DIR": str(MULTINODE), "STANDINS_DIR": str(TESTS / "standins"),
                    "FASTCHAT_CONTROLLER_ADDR": CTL_ADDR, "CONTROLLER_EXPIRY": str(EXPIRY),
                    "WORKER_BEAT": "0.1", "WORKER_LOAD": "0.2", **env}
        self.env.pop("QASUP_SOCKET", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.terminated = False

    @property
    def out(self) -> Path:
        return self.root / f"up.{self.runs}.out"

    def start(self) -> None:
        self.runs += 1
        self.terminated = False
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.ns}", sys.executable, "-m", "supervisor", "--config",
                 str(self.root / "qasup.toml"), "up", "--only", self.only],
                cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def terminate(self) -> None:
        """SIGTERM, once per run: an ordered shutdown."""
        assert self.proc is not None
        if self.proc.poll() is None and not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (an ordered shutdown) and its exit status; SIGKILL after ``timeout`` (then the test fails)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"{self.root.name}: qasup did not stop within {timeout:g}s\n"
                                     f"{self.output()}") from None
        return self.proc.returncode

    def end(self) -> None:
        """After a failure: SIGTERM, SIGKILL if it is still there after 10 s (its guardian then kills the rest)."""
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def status(self) -> dict[str, Any]:
        """``GET /v1/status`` on the node's control socket; {} while it does not answer."""
        conn = _UnixHTTP(self.root / ".qasup" / "qasup.sock")
        try:
            conn.request("GET", "/v1/status")
            r = conn.getresponse()
            return json.loads(r.read()) if r.status == 200 else {}
        except (OSError, ValueError, http.client.HTTPException):
            return {}
        finally:
            conn.close()

    def service(self, name: str) -> dict[str, Any]:
        return next((s for s in self.status().get("services", ()) if s["name"] == name), {})

    def is_in(self, name: str, state: str, not_pid: int | None = None) -> bool:
        """Whether service ``name`` is in ``state`` (with ``not_pid``: and runs, with another pid than that)."""
        s = self.service(name)
        return s.get("state") == state and (not_pid is None or s.get("pid") not in (None, not_pid))

    def stack_state(self) -> str | None:
        return self.status().get("stack", {}).get("state")

    def events(self, service: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = (self.root / ".qasup" / "events.jsonl").read_text().splitlines()
        except OSError:
            return []
        evs = [json.loads(x) for x in lines if x.strip()]
        return [e for e in evs if service is None or e.get("service") == service]

    def first(self, service: str, state: str, since: float = 0.0) -> float | None:
        """The time of ``service``'s first event entering ``state`` at or after ``since``."""
        return next((e["ts"] for e in self.events(service) if e.get("state") == state and e["ts"] >= since), None)

    def output(self) -> str:
        return "".join(f"--- {p.name}\n" + p.read_text(errors="replace") for p in sorted(self.root.glob("up.*.out")))


def table(ctl: Node) -> dict[str, Any]:
    """The controller's worker table as it wrote it last ({} before it ever ran)."""
    try:
        return json.loads((ctl.root / "controller-table.json").read_text())
    except (OSError, ValueError):
        return {}


def waits_on_remote(node: Node, name: str, remote: str) -> bool:
    """``name`` is ``waiting`` on ``node`` while ``remote`` is external there and still being probed."""
    svcs = {s["name"]: s for s in node.status().get("services", ())}
    ext, svc = svcs.get(remote, {}), svcs.get(name, {})
    return ext.get("external") is True and ext.get("state") == "starting" and svc.get("state") == "waiting"


def worker_url(addr: str) -> str:
    return f"http://{addr}:7801"


# ---------------------------------------------------------------------------------------------- the test

def test_one_stack_on_four_nodes(tmp_path: Path) -> None:
    t_begin = time.monotonic()
    net = Net(f"qm{os.getpid()}")
    net.make()
    nodes: dict[str, Node] = {}
    passed = False
    try:
        addrs = {"ctl": f"{SUBNET}.1", "w1": f"{SUBNET}.11", "w2": f"{SUBNET}.12", "api": f"{SUBNET}.20"}
        only = {"ctl": "controller", "w1": "worker", "w2": "worker", "api": "api"}
        for name, addr in addrs.items():
            env = {"FASTCHAT_WORKER_HOST": addr} if name in ("w1", "w2") else {}
            nodes[name] = Node(tmp_path / name, net.node(name, addr), only[name], env)
        ctl, w1, w2, api = nodes["ctl"], nodes["w1"], nodes["w2"], nodes["api"]
        workers = (w1, w2)

        t0 = time.monotonic()

        def step(name: str) -> None:   # (shown with the output of a failed run: where the time went)
            print(f"step {name}: at {time.monotonic() - t_begin:.2f}s (namespaces made in {t0 - t_begin:.2f}s)")

        def said() -> str:
            return "\n".join(f"=== {n.root.name}: {json.dumps(n.status(), indent=None)[:3000]}\n{n.output()[-3000:]}"
                             for n in nodes.values()) + f"\n=== controller table: {table(ctl)}"

        step("1")
        # 1. The worker and API nodes start first: they wait for the controller, which is not there yet.
        for n in (w1, w2, api):
            n.start()
        for w in workers:
            poll(f"{w.root.name}: worker waits for the remote controller (controller external, probing)",
                 partial(waits_on_remote, w, "worker", "controller"), why=said)
            assert w.service("worker")["pid"] is None
        table_view = subprocess.run(  # the user's view: the status table says where the controller is
            [sys.executable, "-m", "supervisor", "--config", str(w1.root / "qasup.toml"), "status"],
            capture_output=True, text=True, timeout=30, env=w1.env)
        row = next((x.split() for x in table_view.stdout.splitlines() if x.split()[:1] == ["controller"]), [])
        assert table_view.returncode == 3 and row[1:3] == ["starting", "external"], table_view.stdout
        poll("api node: api waits for llm, which is external and probing",
             partial(waits_on_remote, api, "api", "llm"), why=said)

        step("2")
        # 2. The controller node starts: both workers start only then, and register by their own address.
        ctl.start()
        poll("ctl node: controller ready", lambda: ctl.service("controller").get("state") == "ready", why=said)
        for w in workers:
            poll(f"{w.root.name}: worker registered and ready",
                 partial(w.is_in, "worker", "ready"), why=said)
        registered = table(ctl)
        assert set(registered["workers"]) == {worker_url(addrs["w1"]), worker_url(addrs["w2"])}, registered
        for w in workers:
            seen_ready = w.first("controller", "ready")
            started = w.first("worker", "starting")
            assert seen_ready is not None and started is not None and started >= seen_ready, (
                f"{w.root.name}: the worker started at {started}, before the remote controller was ready "
                f"({seen_ready})")

        step("3")
        # 3. The API node is ready only once a worker is registered (the controller lists the model).
        poll("api node: stack ready", lambda: api.stack_state() == "ready", why=said)
        first_registration = min(t for t, ev, _ in registered["log"] if ev == "registered")
        llm_ready = api.first("llm", "ready")
        assert llm_ready is not None and llm_ready >= first_registration, (
            f"llm was ready at {llm_ready}, before any worker registered ({first_registration})")
        api_started = api.first("api", "starting")
        assert api_started is not None and api_started >= llm_ready
        api_pid = api.service("api")["pid"]

        step("4")
        # 4. The controller's node restarts (a new controller, an empty worker table): the workers are started
        #    again once it is back, register again, and are live.
        before = {w: w.service("worker") for w in workers}
        t_down = time.time()
        assert ctl.stop() == 0, ctl.output()
        for w in workers:
            poll(f"{w.root.name}: sees the controller gone (external back to starting)",
                 partial(w.first, "controller", "starting", t_down), why=said)
        ctl.start()
        poll("ctl node: the new controller is ready", lambda: ctl.service("controller").get("state") == "ready",
             why=said)
        new_pid = ctl.service("controller")["pid"]
        for w in workers:
            poll(f"{w.root.name}: worker live again with a new run",
                 partial(w.is_in, "worker", "ready", not_pid=before[w]["pid"]), why=said)
        poll("the new controller lists both workers again",
             lambda: table(ctl).get("pid") == new_pid and len(table(ctl)["workers"]) == 2, why=said)
        poll("api node: ready again", lambda: api.stack_state() == "ready", why=said)
        assert api.service("api")["pid"] == api_pid, "the API kept running while the controller restarted"

        step("5")
        # 5. One worker node's link goes down: the controller drops it, the other worker still serves the model,
        #    the API stays ready.
        net.link(w1.ns, up=False)
        t_cut = time.time()
        poll("the controller drops the cut worker (its heart beats stop)",
             lambda: worker_url(addrs["w1"]) not in table(ctl).get("workers", {}), why=said)
        poll("w1: its worker is no longer ready (it cannot reach the controller)",
             lambda: w1.service("worker").get("state") != "ready", why=said)
        time.sleep(2 * PROBE + 0.1)   # two [live] rounds of llm on the API node after the drop: a non-event
        assert api.service("llm")["state"] == "ready" and api.stack_state() == "ready", said()
        assert [e for e in api.events("llm") if e["ts"] >= t_cut] == [], api.events("llm")

        step("6")
        # 6. The second worker's link goes down too: no worker serves the model, the API degrades ...
        net.link(w2.ns, up=False)
        poll("api node: llm no longer live (external back to starting)",
             lambda: api.service("llm").get("state") == "starting", why=said)
        poll("api node: stack degraded", lambda: api.stack_state() == "degraded", why=said)
        # the rule (supervisor/engine/external.py, [live] action "restart"): what requires the external service
        # reacts as to a local required dependency that restarts: a running dependent keeps running
        still = api.service("api")
        assert still["state"] == "ready" and still["pid"] == api_pid, still
        # ... and recovers when the links return.
        net.link(w1.ns, up=True)
        net.link(w2.ns, up=True)
        for w in workers:
            poll(f"{w.root.name}: worker registered and ready again",
                 partial(w.is_in, "worker", "ready"), why=said)
        poll("api node: llm ready and the stack ready again",
             lambda: api.service("llm").get("state") == "ready" and api.stack_state() == "ready", why=said)
        assert api.service("api")["pid"] == api_pid, "the API was restarted: it has no restart_with llm"

        step("7")
        # 7. Every node shuts down cleanly, and nothing is left in any namespace.
        for n in (api, w1, w2, ctl):
            n.terminate()   # all four at once
        for n in (api, w1, w2, ctl):
            assert n.stop() == 0, n.output()
            assert "stack stopped cleanly; exit 0" in n.output(), n.output()
        assert {n.ns: net.pids(n.ns) for n in nodes.values()} == {n.ns: [] for n in nodes.values()}
        step("done")
        passed = True
    finally:
        for n in nodes.values():
            n.end()
        left = net.close(wait=0.0 if passed else 3.0)
        print(f"namespaces deleted: at {time.monotonic() - t_begin:.2f}s")
    assert not left, "left behind (killed now):\n" + "\n".join(left)
