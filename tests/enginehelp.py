"""Helpers for the engine tests: build a stack folder, run ``qasup up`` as a subprocess (the user's view),
read what it records, and make sure nothing it started outlives the test.

Every run carries a unique marker in its environment (``QASUP_TEST_MARK``); services inherit qasup's
environment, so :meth:`Up.leftovers` finds every process of the run in ``/proc`` (setsid'd grandchildren
included) and the ``up`` fixture SIGKILLs and reports whatever is left at teardown.

:meth:`Up.status` is the CLI's ``status --json`` (its exit code included); :meth:`Up.rows` and
:meth:`Up.service_status` read the same document from the control socket in this process, which a poll loop can
call without starting a Python per try. :func:`together` runs a module's independent tests side by side.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

from ports import free_port  # noqa: F401  (re-exported: the tests import it from here)

PY = sys.executable
STANDINS = Path(__file__).parent / "standins"
MARK_VAR = "QASUP_TEST_MARK"


def standin(name: str) -> str:
    return str(STANDINS / name)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string for what we write
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    """A small TOML writer: top-level scalars, then tables, then arrays of tables (``on_log``)."""
    lines = []
    for k, v in doc.items():
        if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict)):
            lines.append(f"{k} = {toml_value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
    for k, v in doc.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"[[{k}]]")
                lines += [f"{kk} = {toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def poll(pred: Callable[[], Any], timeout: float, what: str | Callable[[], str], pause: float = 0.02) -> Any:
    """Call ``pred`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(pause)


def api_status(socket_path: Path, context: str | Callable[[], str] = "", timeout: float = 20.0) -> dict:
    """GET /v1/status on a daemon's control socket, in this process: the status document (``qasup status --json``
    prints it as it is). Waits up to ``timeout`` for a daemon that does not answer yet; fails on any answer but
    200."""
    from supervisor.control import client

    def answer() -> tuple[int, Any] | None:
        try:
            return client.request(socket_path, "GET", "/v1/status", timeout=10)
        except client.NoDaemon:
            return None
    code, doc = poll(answer, timeout, lambda: f"an answer on {socket_path}; {context() if callable(context) else context}")
    assert code == 200 and isinstance(doc, dict), (code, doc)
    return doc


def all_ready(doc: dict) -> bool:
    """Whether every enabled service of a status document is ready (when ``qasup status`` exits 0)."""
    return all(s["state"] == "ready" for s in doc["services"] if s["state"] != "disabled")


def marked_pids(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds ``QASUP_TEST_MARK=marker``."""
    needle = f"{MARK_VAR}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        if st[st.rfind(b")") + 2:][:1] in (b"Z", b"X"):
            continue
        if needle in env.split(b"\0"):
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(b")") + 2:][:1] not in (b"Z", b"X")


class Stack:
    """A stack folder: ``unit(name, **keys)`` writes services.d/NAME.toml, ``stack(**keys)`` qasup.toml."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "services.d").mkdir(parents=True, exist_ok=True)
        self._stack: dict[str, Any] = {}

    def unit(self, name: str, **doc: Any) -> Path:
        p = self.root / "services.d" / f"{name}.toml"
        p.write_text(to_toml(doc))
        return p

    def stack(self, **keys: Any) -> None:
        self._stack.update(keys)
        (self.root / "qasup.toml").write_text(to_toml({"stack": self._stack}))


class Up:
    """One ``qasup up`` run: a subprocess in its own session, stdout+stderr to a file."""

    def __init__(self, root: Path, marker: str) -> None:
        self.root = root
        self.marker = marker
        self.proc: subprocess.Popen | None = None
        self.out_path = root / "qasup.out"
        self.code: int | None = None

    def start(self, *args: str, env: dict[str, str] | None = None, wrap: Iterable[str] = ()) -> Up:
        full = {**os.environ, "QASUP_GPUS": "none", MARK_VAR: self.marker, "PYTHONUNBUFFERED": "1", **(env or {})}
        full.pop("QASUP_SOCKET", None)
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen([*wrap, PY, "-m", "supervisor", "up", *args], cwd=self.root, env=full,
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    # ---------------------------------------------------------------- what it recorded

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def state_dir(self) -> Path:
        import tomllib

        try:
            doc = tomllib.loads((self.root / "qasup.toml").read_text())
        except FileNotFoundError:
            doc = {}
        return self.root / doc.get("stack", {}).get("state_dir", ".qasup")

    def events(self) -> list[dict]:
        p = self.state_dir / "events.jsonl"
        try:
            text = p.read_text()
        except FileNotFoundError:
            return []
        evs = []
        for line in text.splitlines():
            if line.endswith("}"):
                try:
                    evs.append(json.loads(line))
                except ValueError:
                    pass
        return evs

    def states(self, name: str) -> list[str]:
        return [e["state"] for e in self.events() if e.get("service") == name]

    def first(self, name: str, state: str) -> dict | None:
        return next((e for e in self.events() if e.get("service") == name and e["state"] == state), None)

    def wait_state(self, name: str, state: str, timeout: float = 10.0, nth: int = 1) -> dict:
        def get():
            evs = [e for e in self.events() if e.get("service") == name and e["state"] == state
                   and e.get("prev") != state]
            return evs[nth - 1] if len(evs) >= nth else None
        return poll(get, timeout, lambda: f"{name} {state} (#{nth}); output so far:\n{self.out}")

    def wait_out(self, text: str, timeout: float = 10.0) -> None:
        poll(lambda: text in self.out, timeout, lambda: f"{text!r} on qasup's stdout; output so far:\n{self.out}")

    def log(self, name: str) -> bytes:
        return (self.root / "logs" / f"{name}.log").read_bytes()

    def status(self, *names: str) -> tuple[int, dict | None]:
        """``qasup status --json NAMES``, the CLI as a subprocess: its exit code and the document it printed."""
        env = {k: v for k, v in os.environ.items() if k != "QASUP_SOCKET"}
        r = subprocess.run([PY, "-m", "supervisor", "status", "--json", *names], cwd=self.root, env=env,
                           capture_output=True, timeout=20)
        try:
            return r.returncode, json.loads(r.stdout)
        except ValueError:
            return r.returncode, None

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "qasup.sock"

    def rows(self) -> dict[str, dict]:
        """Every service's status row, by name, from the document ``qasup status --json`` prints (GET /v1/status),
        read in this process: a CLI start per read would compete for the CPU with what a poll waits for."""
        return {s["name"]: s for s in api_status(self.socket_path, lambda: f"output so far:\n{self.out}")["services"]}

    def service_status(self, name: str) -> dict:
        return self.rows()[name]

    # ---------------------------------------------------------------- life cycle

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        try:
            self.code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"qasup up did not exit within {timeout}s; output:\n{self.out}") from None
        return self.code

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (an ordered shutdown) and the exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def leftovers(self) -> list[int]:
        return marked_pids(self.marker)

    def cleanup(self) -> list[str]:
        """Kill the qasup session and every marked process; describe what had to be killed."""
        left: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            # a test that failed half-way: ask for the ordered shutdown first, then insist
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                left.append(f"qasup up (pid {self.proc.pid}) ignored SIGTERM for 10 s")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        deadline = time.monotonic() + 3
        pids = self.leftovers()
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)  # a just-stopped tree may still be vanishing (reaped by its new parent)
            pids = self.leftovers()
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = "?"
            left.append(f"pid {pid}: {cmd}")
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if hasattr(self, "_out"):
            self._out.close()
        return left


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path)


@pytest.fixture
def up(tmp_path: Path):
    """A factory for the ``qasup up`` run of this test; at teardown nothing it started may be left."""
    runs: list[Up] = []

    def make() -> Up:
        u = Up(tmp_path, uuid.uuid4().hex)
        runs.append(u)
        return u

    yield make
    problems = []
    for u in runs:
        problems += u.cleanup()
    assert not problems, "processes left behind:\n" + "\n".join(problems)


def unshare_problem() -> str | None:
    """Why a PID-namespace test cannot run here (None when ``unshare --pid --fork --mount-proc`` works)."""
    try:
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare is not available: {e}"
    if r.returncode != 0:
        return f"unshare --pid --fork --mount-proc is not permitted here: {r.stderr.decode().strip()}"
    return None


# ------------------------------------------------------------------------------------------ together
# Run a module's independent daemon tests at the same time: most of such a test is waiting (for a daemon to
# start, a probe to pass, a time-out to run out), so a few of them side by side take about as long as the longest.
#
# A test marked with :func:`together` keeps its body and its assertions; what changes is when the body runs. The
# module's first ``together`` test starts the bodies of every selected ``together`` test of the module in a small
# pool of threads (:data:`WORKERS`), each with fixtures of its own, made as the ordinary ones are:
#
# * ``tmp_path``: a fresh folder (``tmp_path_factory.mktemp``, named as the fixture names it);
# * ``stack``: :class:`Stack` on that folder;
# * ``up``: the factory of :func:`up`; at the body's end every run it made is cleaned up and nothing it
#   started may be left (the fixture's teardown assertion, raised in the test);
# * any other name: the context manager the module maps it to in ``TOGETHER_FIXTURES`` (entered for the body).
#
# Each test then waits for its own body and fails, skips or passes as the body did: a failed assertion is
# reported in the test it belongs to. Parametrized tests work: ``together`` goes above ``pytest.mark.parametrize``.
# A test of the module that is not ``together`` runs once the bodies are done (:func:`together_alone`), alone.
#
# Only for tests that change nothing shared by the whole test process (the umask, the working folder, signal
# handlers, resource limits, the environment) and whose time bounds hold with a few daemons beside them.

WORKERS = 3
"""Bodies at once (on 2 cores: a daemon test mostly waits)."""

RESULTS = "together_results"


def together(body: Callable[..., None]) -> Callable[..., None]:
    """Mark a test to run at the same time as the module's other ``together`` tests (see this section's comment)."""
    marks = getattr(body, "pytestmark", [])
    params = [name.strip() for m in marks if m.name == "parametrize"
              for name in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])]

    def test(**kwargs: Any) -> None:
        kwargs[RESULTS][kwargs["request"].node.nodeid].result(timeout=600)

    test.__name__, test.__qualname__, test.__doc__ = body.__name__, body.__qualname__, body.__doc__
    test.__module__ = body.__module__
    test.__signature__ = inspect.Signature(   # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in [RESULTS, "request", *params]])
    test.together_body = body   # type: ignore[attr-defined]
    test.pytestmark = marks   # type: ignore[attr-defined]
    return test


def _run(body: Callable[..., None], tmp: Path, params: dict[str, Any], makers: dict[str, Callable[[], Any]]) -> None:
    runs: list[Up] = []

    def make() -> Up:
        u = Up(tmp, uuid.uuid4().hex)
        runs.append(u)
        return u

    given: dict[str, Callable[[], Any]] = {"tmp_path": lambda: tmp, "stack": lambda: Stack(tmp), "up": lambda: make}
    try:
        with contextlib.ExitStack() as entered:
            kwargs = {name: params[name] if name in params else
                      given[name]() if name in given else entered.enter_context(makers[name]())
                      for name in inspect.signature(body).parameters}
            body(**kwargs)
    finally:
        problems = [p for u in runs for p in u.cleanup()]
        assert not problems, "processes left behind:\n" + "\n".join(problems)


_started: dict[object, list[Future[None]]] = {}
"""The bodies started, by module."""


@pytest.fixture(autouse=True)
def together_alone(request: pytest.FixtureRequest) -> None:
    """A test that is not ``together`` runs with none of its module's ``together`` bodies beside it."""
    if not hasattr(request.function, "together_body"):
        wait(_started.get(request.module, ()))


@pytest.fixture(scope="module")
def together_results(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[None]]]:
    """The bodies of the module's selected ``together`` tests, started at once: ``nodeid -> Future``."""
    makers = getattr(request.module, "TOGETHER_FIXTURES", {})
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="together")
    futures: dict[str, Future[None]] = {}
    for item in request.session.items:
        fn = getattr(item, "function", None)
        if item.module is not request.module or not hasattr(fn, "together_body"):
            continue
        params = item.callspec.params if hasattr(item, "callspec") else {}
        tmp = tmp_path_factory.mktemp(re.sub(r"[\W]", "_", item.name)[:30])   # made here: mktemp is not thread-safe
        futures[item.nodeid] = pool.submit(_run, fn.together_body, tmp, params, makers)
    _started[request.module] = list(futures.values())
    try:
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=False)
        _started.pop(request.module, None)
