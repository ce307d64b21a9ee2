"""Real servers from Debian under qasup: nginx, redis and memcached in the foreground and daemonizing
(``type = "forking"`` with ``pid_file``), postgres 15 as its own user (``user = "postgres"``). Each one, with qasup
as a child of the test and as PID 1 of a PID namespace: ready by TCP (then a real request of its protocol),
``restart``, ``stop``, ``start``, shutdown, and SIGKILL of qasup: nothing left, every time, checked in /proc (a
marker in argv or cwd: the work folder) and by the port being free again. Also the default ``type = "simple"``
with a daemonizing nginx: a failed start that says how to fix it, and nothing left.

The unit files are tests/integration/units/*.toml; the test writes what they name into its work folder (nginx.conf,
postgres' data folder) and passes the port and folder as IT_PORT and IT_DIR.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import need, need_root
from .kit import START_TIMEOUT, Daemon, Work, free_port, host_pid, poll, unshare_problem

# ------------------------------------------------------------------------------------------ each server

def nginx_conf(work: Work, port: int, env: dict[str, str]) -> None:
    (work.dir / "tmp").mkdir()
    t = work.dir / "tmp"
    (work.dir / "nginx.conf").write_text(textwrap.dedent(f"""\
        worker_processes 2;
        pid nginx.pid;
        error_log stderr notice;
        events {{ worker_connections 64; }}
        http {{
            access_log off;
            client_body_temp_path {t}/body;
            proxy_temp_path {t}/proxy;
            fastcgi_temp_path {t}/fastcgi;
            uwsgi_temp_path {t}/uwsgi;
            scgi_temp_path {t}/scgi;
            server {{
                listen 127.0.0.1:{port};
                location / {{ return 200 "qasup-it nginx\\n"; }}
            }}
        }}
    """))


def memcached_run_dir(work: Work, port: int, env: dict[str, str]) -> None:
    run = work.dir / "run"   # memcached writes its pid file after dropping root to memcache
    run.mkdir()
    pw = pwd.getpwnam("memcache")
    os.chown(run, pw.pw_uid, pw.pw_gid)


PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), "/usr/lib/postgresql/15/bin")
_pg_template: list[Path] = []


def pg_template() -> Path:
    """An initdb'd data folder (owned by postgres), made once per test session, copied by each test."""
    if not _pg_template:
        root = Path(tempfile.mkdtemp(prefix="qasup-it-pgtemplate-", dir="/tmp"))
        root.chmod(0o755)
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        r = subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", str(root / "data"),
                            "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"],
                           capture_output=True, text=True, timeout=120, cwd="/")
        assert r.returncode == 0, f"initdb failed:\n{r.stdout}\n{r.stderr}"
        _pg_template.append(root)
    return _pg_template[0]


def pg_data(work: Work, port: int, env: dict[str, str]) -> None:
    pg = work.dir / "pg"
    pg.mkdir(mode=0o700)
    pw = pwd.getpwnam("postgres")
    os.chown(pg, pw.pw_uid, pw.pw_gid)
    subprocess.run(["cp", "-a", str(pg_template() / "data"), str(pg / "data")], check=True, timeout=60)
    env["IT_PG_BIN"] = PG_BIN


def http_probe(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
        assert (r.status, r.read()) == (200, b"qasup-it nginx\n")


def line_probe(request: bytes, answer: bytes) -> Callable[[int], None]:
    def probe(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(request)
            got = s.recv(256)
        assert got.startswith(answer), got
    return probe


def psql_probe(port: int) -> None:
    r = subprocess.run([f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-Atc",
                        "select current_user || ' ' || 40 + 2"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, "postgres 42"), r.stderr


@dataclass(frozen=True)
class Server:
    unit: str
    program: str                 # the executable that has to be installed (a name on PATH or a path)
    apt: str                     # the Debian package that has it
    exe: str                     # basename of /proc/PID/exe of the main process
    probe: Callable[[int], None]
    setup: Callable[[Work, int, dict[str, str]], None] | None = None
    pid_file: str | None = None  # forking: where the daemon writes its pid (relative to IT_DIR)
    user: str | None = None      # every server process must run as this user


SERVERS = [
    Server("nginx", "nginx", "nginx", "nginx", http_probe, nginx_conf),
    Server("nginx-forking", "nginx", "nginx", "nginx", http_probe, nginx_conf, pid_file="nginx.pid"),
    Server("redis", "redis-server", "redis-server", "redis-check-rdb", line_probe(b"PING\r\n", b"+PONG")),
    Server("redis-forking", "redis-server", "redis-server", "redis-check-rdb", line_probe(b"PING\r\n", b"+PONG"),
           pid_file="redis.pid"),
    Server("memcached", "memcached", "memcached", "memcached", line_probe(b"version\r\n", b"VERSION "),
           memcached_run_dir),
    Server("memcached-forking", "memcached", "memcached", "memcached", line_probe(b"version\r\n", b"VERSION "),
           memcached_run_dir, pid_file="run/memcached.pid"),
    Server("postgres", f"{PG_BIN}/postgres", "postgresql-15", "postgres", psql_probe, pg_data, user="postgres"),
]
MODES = [False, True]


def server_params() -> list:
    return [pytest.param(s, pid1, id=f"{s.unit}-{'pid1' if pid1 else 'child'}") for s in SERVERS for pid1 in MODES]


@pytest.fixture
def stack(work: Work) -> Iterator[Callable[[Server, bool], tuple[Daemon, int]]]:
    def make(server: Server, pid1: bool) -> tuple[Daemon, int]:
        need_root("servers drop root themselves (nginx workers, memcached -u, postgres as its own user)")
        need(server.program, apt=server.apt)
        if server.unit == "postgres":
            need("runuser", apt="util-linux")
        if pid1 and (problem := unshare_problem()):
            pytest.skip(problem)
        port = free_port()
        env = {"IT_DIR": str(work.dir), "IT_PORT": str(port)}
        if server.setup:
            server.setup(work, port, env)
        work.stack_file("""
            [stack]
            name = "it-servers"
            stop_budget = "60s"
        """)
        work.add_unit(server.unit)
        return work.daemon(env, pid1=pid1), port
    yield make


def check_main(daemon: Daemon, server: Server) -> int:
    """The service's main process as seen here: the right program, for forking the pid in the pid file, every
    server process as the unit's user. Returns its pid."""
    s = daemon.service(server.unit)
    assert s["state"] == "ready", s
    procs = daemon.service_procs()
    main = s["pid"] if not daemon.pid1 else host_pid(s["pid"], procs)
    assert main is not None and main in {p.pid for p in procs}, (s, [str(p) for p in procs])
    p = next(p for p in procs if p.pid == main)
    assert os.path.basename(p.exe).startswith(server.exe), str(p)
    if server.pid_file:
        written = int((daemon.work.dir / server.pid_file).read_text().split()[0])
        assert written == s["pid"], f"main pid {s['pid']}, pid file {written}"
    if server.user:
        uid = pwd.getpwnam(server.user).pw_uid
        assert {q.uid for q in procs} == {uid}, [str(q) for q in procs]
    return main


# ------------------------------------------------------------------------------------------ the tests

@pytest.mark.parametrize(("server", "pid1"), server_params())
def test_ready_restart_stop_start_shutdown_leave_nothing(stack, work, server, pid1):
    daemon, port = stack(server, pid1)
    name = server.unit
    daemon.start()
    daemon.wait_ready(name)
    server.probe(port)
    main = check_main(daemon, server)

    before = {p.ident for p in daemon.service_procs()}
    daemon.ok("restart", name)
    daemon.wait_ready(name)
    server.probe(port)
    assert check_main(daemon, server) != main
    still = before & {p.ident for p in daemon.service_procs()}
    assert not still, f"processes from before the restart still run: {still}"

    daemon.ok("stop", name)
    assert daemon.service(name)["state"] == "stopped"
    work.nothing_left(exclude=daemon.own_pids, ports=[port], what=f"after qasup stop {name}")

    daemon.ok("start", name)
    daemon.wait_ready(name)
    server.probe(port)
    check_main(daemon, server)

    if pid1:
        code = daemon.terminate()   # docker stop: SIGTERM to PID 1
    else:
        daemon.ok("shutdown", "--wait")
        code = daemon.wait()
    assert code == 0, daemon.out
    work.nothing_left(ports=[port], what="after the shutdown")


@pytest.mark.parametrize(("server", "pid1"), server_params())
def test_sigkill_of_qasup_leaves_nothing(stack, work, server, pid1):
    daemon, port = stack(server, pid1)
    daemon.start()
    daemon.wait_ready(server.unit)
    server.probe(port)
    assert daemon.service_procs(), "no server process found"
    daemon.kill9()
    work.nothing_left(timeout=15, ports=[port], what="after SIGKILL of qasup")


@pytest.mark.parametrize("pid1", MODES, ids=["child", "pid1"])
def test_daemonizing_nginx_under_the_default_type_is_a_failed_start(stack, work, pid1):
    server = Server("nginx-daemonizing", "nginx", "nginx", "nginx", http_probe, nginx_conf)
    daemon, port = stack(server, pid1)
    daemon.start()
    poll(lambda: "failed" in daemon.states(server.unit), START_TIMEOUT,
         lambda: f"{server.unit} failed; output:\n{daemon.out}")
    s = daemon.service(server.unit)
    # (the TCP probe may pass before the launcher exits: the socket it bound is already the daemon's, so a
    # "ready" can come first; the launcher's exit 0 with the daemon left behind then fails the start)
    assert s["state"] == "failed", s
    why = s["last_error"] or ""
    assert "daemon" in why and "daemon off;" in why and 'type = "forking"' in why, s
    work.nothing_left(timeout=0, exclude=daemon.own_pids, ports=[port], what="after the failed start")
    assert daemon.terminate() == 0, daemon.out


def teardown_module() -> None:
    for root in _pg_template:
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_says_ready_through_sd_notify(stack, work):
    """Debian's PostgreSQL speaks sd_notify: with ``[ready] notify = true`` and no other check, the service is ready
    when the postmaster sends READY=1 (it does so once it accepts connections), so a query works at once."""
    server = Server("postgres-notify", f"{PG_BIN}/postgres", "postgresql-15", "postgres", psql_probe, pg_data,
                    user="postgres")
    daemon, port = stack(server, False)
    daemon.start()
    daemon.wait_ready("postgres-notify")
    psql_probe(port)   # ready came from READY=1 alone: the server answers at that moment
    assert any(e.get("service") == "postgres-notify" and e.get("state") == "ready" for e in daemon.events())
    daemon.ok("shutdown", "--wait")
    assert daemon.wait() == 0, daemon.out
    work.nothing_left(ports=[port], what="after the shutdown")
