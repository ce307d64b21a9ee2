"""The two supervisors under test: config generation, start, status, stop, and the supervisord venv.

Both run the same :class:`Prog` list. qasup runs as ``PYTHON -m supervisor --config ROOT/qasup.toml up``
with a unique ``QASUP_SOCKET``; supervisord runs from its own venv (both packages are named
``supervisor``, so they never share an interpreter) with ``nodaemon=true`` and ``startsecs=0``.
Every process either daemon starts inherits ``BENCH_RUN`` and ``BENCH_DAEMON`` in its environment, so
:meth:`Daemon.stop` can always find and kill what is left, whatever the daemon did.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit.procs import EventsTail, LineWatcher, kill_marked, timed_run

SUPERVISORD_VERSION = "4.3.0"

RULE_PATTERNS = [
    r"CUDA out of memory",
    r"Traceback \(most recent call last\)",
    r"(?i)segmentation fault",
    r"^Starting worker",
    r"Killed$",
    r"address already in use",
    r"RuntimeError: .*CUDA",
    r"\bOOM\b",
    r"ValueError: [a-z]+ not found",
    r"NCCL error",
]


@dataclass
class Prog:
    """One stand-in program, as both supervisors are told to run it."""

    name: str
    argv: list[str]
    requires: tuple[str, ...] = ()
    ready_log: str | None = None       # qasup readiness marker (supervisord has none)
    restart: str = "always"            # qasup policy; supervisord: autorestart true unless "never"
    rules: int = 0                     # how many [[on_log]] rules (action warn; never matching the output)
    log_max: str = "50MiB"
    extra: dict = field(default_factory=dict)


def _q(s: str) -> str:
    return json.dumps(s)   # a JSON string is a valid TOML basic string


def _qlist(xs) -> str:
    return "[" + ", ".join(_q(x) for x in xs) + "]"


class Daemon:
    """Common life cycle: a process in its own session, its stdout watched, a guaranteed clean stop."""

    kind = "daemon"

    def __init__(self, root: Path, marker: str) -> None:
        self.root = root
        self.marker = marker
        self.tag = f"{marker}/{root.name}"
        self.proc: subprocess.Popen | None = None
        self.watch: LineWatcher | None = None
        root.mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BENCH_RUN"] = self.marker
        env["BENCH_DAEMON"] = self.tag
        return env

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Launch; returns the wall time just before the launch."""
        env = self.environment()
        argv = self.argv()
        t0 = time.time()
        self.proc = subprocess.Popen(argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.watch = LineWatcher(self.proc.stdout)
        return t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> float | None:
        """SIGTERM and wait; then SIGKILL the session and every marked leftover. Seconds the stop took, or
        None when the daemon had to be killed (or was not running)."""
        if self.proc is None:
            return None
        took = None
        try:
            if self.proc.poll() is None:
                start = time.perf_counter()
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                    took = time.perf_counter() - start
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self.leftovers = kill_marked("BENCH_DAEMON", self.tag)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return took

    def output_tail(self, n: int = 12) -> str:
        return "\n".join(self.watch.tail(n)) if self.watch else ""


class Qasup(Daemon):
    kind = "qasup"

    def __init__(self, root: Path, marker: str, python: str, progs: list[Prog], *, echo: bool = True,
                 stop_budget: str = "30s") -> None:
        super().__init__(root, marker)
        self.python = python
        self.progs = progs
        self.socket = root / "q.sock"
        self.config = root / "qasup.toml"
        self.events = EventsTail(root / ".qasup" / "events.jsonl")
        self._write(echo, stop_budget)

    def _write(self, echo: bool, stop_budget: str) -> None:
        self.config.write_text(f'[stack]\nname = "bench"\necho = {"true" if echo else "false"}\n'
                               f'stop_budget = {_q(stop_budget)}\n')
        units = self.root / "services.d"
        units.mkdir(exist_ok=True)
        for p in self.progs:
            lines = [f"command = {_qlist(p.argv)}"]
            if p.requires:
                lines.append(f"requires = {_qlist(p.requires)}")
            lines += ["[log]", f"max_bytes = {_q(p.log_max)}"]
            if p.ready_log:
                lines += ["[ready]", f"log = {_q(p.ready_log)}", 'timeout = "60s"']
            lines += ["[restart]", f"policy = {_q(p.restart)}", 'delay = "0s"', "max_restarts = 100000",
                      "[stop]", 'timeout = "3s"']
            for pat in RULE_PATTERNS[:p.rules]:
                lines += ["[[on_log]]", f"match = {_q(pat)}", 'action = "warn"']
            (units / f"{p.name}.toml").write_text("\n".join(lines) + "\n")

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["QASUP_SOCKET"] = str(self.socket)
        return env

    def argv(self) -> list[str]:
        return [*self.command(), "--config", str(self.config), "up"]

    def command(self) -> list[str]:
        """How users run qasup: the ``qasup`` console script beside the interpreter (pip's), else ``-m``."""
        script = Path(self.python).with_name("qasup")
        return [str(script)] if script.exists() else [self.python, "-m", "supervisor"]

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def wait_all_ready(self, n: int, timeout: float) -> float:
        """Arrival time of qasup's ``all N services ready`` line."""
        assert self.watch is not None
        needle = f"all {n} services ready"
        t, _ = self.watch.wait_for(lambda line: needle in line, timeout, what=f"'{needle}' line")
        return t

    def status(self, *extra: str) -> tuple[int, float, str]:
        return timed_run([*self.command(), "status", *extra], self.environment(), cwd=self.root)

    def service_pid(self, name: str) -> int:
        code, _, out = self.status(name, "--json")
        data = json.loads(out[out.index("{"):])
        for s in data["services"]:
            if s["name"] == name and s.get("pid"):
                return int(s["pid"])
        raise RuntimeError(f"qasup status shows no pid for {name} (exit {code})")


class Supervisord(Daemon):
    kind = "supervisord"

    def __init__(self, root: Path, marker: str, venv: Path, progs: list[Prog]) -> None:
        super().__init__(root, marker)
        self.venv = venv
        self.progs = progs
        self.conf = root / "supervisord.conf"
        self.socket = root / "sv.sock"
        (root / "logs").mkdir(exist_ok=True)
        self._write()

    def _write(self) -> None:
        r = self.root
        out = [
            "[unix_http_server]", f"file={self.socket}",
            "[supervisord]", "nodaemon=true", f"logfile={r / 'supervisord.log'}", "logfile_maxbytes=0",
            f"pidfile={r / 'supervisord.pid'}", f"childlogdir={r / 'logs'}", "loglevel=info", "user=root"
            if os.geteuid() == 0 else "", "minfds=1024",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]", f"serverurl=unix://{self.socket}",
        ]
        for p in self.progs:
            maxbytes = "1GB" if "GiB" in p.log_max else "50MB"
            out += [f"[program:{p.name}]", "command=" + shlex.join(p.argv).replace("%", "%%"), "startsecs=0",
                    f"autorestart={'false' if p.restart == 'never' else 'true'}", "startretries=100000",
                    "redirect_stderr=true", f"stdout_logfile={self.log_file(p.name)}",
                    f"stdout_logfile_maxbytes={maxbytes}", "stdout_logfile_backups=5",
                    "stopasgroup=true", "killasgroup=true", "stopwaitsecs=3"]
        self.conf.write_text("\n".join(x for x in out if x) + "\n")

    def environment(self) -> dict[str, str]:
        env = super().environment()
        for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(k, None)
        return env

    def argv(self) -> list[str]:
        return [str(self.venv / "bin" / "supervisord"), "-c", str(self.conf)]

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    @staticmethod
    def running_line(name: str | None = None):
        needle = f"success: {name} entered RUNNING state" if name else "entered RUNNING state"
        return lambda line: needle in line

    def wait_all_running(self, n: int, timeout: float, start: int = 0) -> float:
        assert self.watch is not None
        t, _ = self.watch.wait_for(self.running_line(), timeout, start=start, count=n,
                                   what=f"{n} 'entered RUNNING state' lines")
        return t

    def ctl(self, *args: str) -> tuple[int, float, str]:
        return timed_run([str(self.venv / "bin" / "supervisorctl"), "-c", str(self.conf), *args],
                         self.environment(), cwd=self.root)

    def status(self) -> tuple[int, float, str]:
        return self.ctl("status")

    def service_pid(self, name: str) -> int:
        code, _, out = self.ctl("pid", name)
        try:
            return int(out.strip())
        except ValueError:
            raise RuntimeError(f"supervisorctl pid {name} answered {out.strip()!r} (exit {code})") from None


def ensure_qasup(venv: Path, repo: Path, log) -> str:
    """Install this checkout into ``venv`` as users get it (``pip install REPO``, not editable: the Dockerfile's
    way), built anew each run so that the current code is measured; returns the venv's python.

    Not the project's editable venv: setuptools' editable finder (a ``.pth`` hook) imports pathlib, re,
    urllib.parse and ipaddress into every interpreter of that venv (~20 ms here), ``python -c pass`` included,
    which no installed qasup pays."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if not python.exists():
        log(f"creating {venv}")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], env=env, check=True)
        subprocess.run(pip + [str(repo)], env=env, check=True, cwd=tempfile.gettempdir())
    if subprocess.run([str(python), "-c", "import sanic"], env=env, capture_output=True).returncode != 0:
        log(f"installing sanic into {venv} (scenario 8 runs a Sanic app with qasup's interpreter)")
        subprocess.run(pip + ["sanic>=23.12"], env=env, check=False, cwd=tempfile.gettempdir())
    log(f"installing this checkout into {venv} (pip install, not editable)")
    with tempfile.TemporaryDirectory(prefix="qasup-bench-build-") as build:
        # a copy of what the package is made of, so that pip's build/ folder and egg-info never land in the checkout
        src = Path(build) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (repo / name).exists():
                shutil.copy2(repo / name, src / name)
        shutil.copytree(repo / "supervisor", src / "supervisor", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(pip + ["--no-deps", "--force-reinstall", str(src)], env=env, check=True,
                       cwd=tempfile.gettempdir())
    return str(python)


def ensure_supervisord(venv: Path, log) -> str:
    """Make sure ``venv`` holds supervisord (4.3.0 if PyPI has it, else the newest); returns its version."""
    sd = venv / "bin" / "supervisord"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}

    def version() -> str | None:
        if not sd.exists():
            return None
        r = subprocess.run([str(sd), "--version"], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            return None
        return r.stdout.strip() or None

    have = version()
    if have == SUPERVISORD_VERSION:
        return have
    if not (venv / "bin" / "python").exists():
        log(f"creating {venv}")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], env=env, check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    log(f"installing supervisor=={SUPERVISORD_VERSION} into {venv}")
    r = subprocess.run(pip + [f"supervisor=={SUPERVISORD_VERSION}"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        log(f"supervisor=={SUPERVISORD_VERSION} not installable ({r.stderr.strip()[-200:]}); trying the newest")
        subprocess.run(pip + ["supervisor"], env=env, check=True)
    have = version()
    if have is None:
        raise RuntimeError(f"supervisord is not runnable from {venv}")
    return have
