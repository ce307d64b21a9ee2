"""The unit loader in-process: values, defaults, ``${NAME}`` expansion, drop-ins.

The user's view of the same checks (``qasup check`` on broken stacks) is in test_check_corpus.py.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from supervisor.config.files import merge
from supervisor.config.loader import load_config
from supervisor.config.values import format_duration, parse_signal, parse_size
from supervisor.errors import ConfigError, Problems
from supervisor.plan.resolve import UnknownVariable, expand, resolve_unit
from supervisor.protocol import parse_duration

from conftest import make_stack


def load(tmp_path: Path, units: dict[str, str], stack_toml: str | None = None, files=None):
    return load_config(cwd=make_stack(tmp_path, units, stack_toml, files))


def problems(tmp_path: Path, units: dict[str, str], stack_toml: str | None = None, files=None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, units, stack_toml, files)
    return [f"{Path(p.file).relative_to(tmp_path)}: {p.key}: {p.message}" for p in e.value.problems]


def resolve(tmp_path: Path, unit_toml: str, *, environ=None, files=None, plan_env=None):
    """Load one unit ``web`` and expand it; returns (ResolvedUnit or None, problems as text)."""
    config = load(tmp_path, {"web": unit_toml}, files=files)
    probs = Problems()
    r = resolve_unit(config.stack, config.units["web"], plan_env or {}, {}, probs, environ or {})
    return r, [f"{p.key}: {p.message}" for p in probs.items]


# ------------------------------------------------------------------------------------------------ values

@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("10s", 10), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("1.5s", 1.5), ("0s", 0),
    ("1h2m3s", 3723)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "s", "5 m", "1d", "-1s", "1s ", " 1s", "1.s", 10, None, True])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("value, size", [
    (0, 0), (123, 123), ("512KiB", 512 * 1024), ("50MiB", 50 * 1024**2), ("1GiB", 1024**3), ("1KB", 1000),
    ("2M", 2 * 1024**2), ("100", 100), ("1.5KiB", 1536)])
def test_sizes(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("bad", ["lots", "", "1 XB", "-5", -1, True, 1.5, None, "MiB"])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize("value, sig", [
    ("SIGTERM", signal.SIGTERM), ("TERM", signal.SIGTERM), ("int", signal.SIGINT), ("SIGQUIT", signal.SIGQUIT),
    (9, signal.SIGKILL), ("SIGUSR1", signal.SIGUSR1)])
def test_signals(value, sig):
    assert parse_signal(value) == int(sig)


@pytest.mark.parametrize("bad", ["SIGFOO", "", "SIG", "SIG_DFL", "SIG_IGN", 0, 999, -1, True, 1.0, "15"])
def test_bad_signals(bad):
    with pytest.raises(ValueError):
        parse_signal(bad)


def test_format_duration_reads_back():
    for s in (0.25, 1, 42, 90, 3600 + 120):
        assert parse_duration(format_duration(s).replace("m0", "m").replace("h0", "h")) == pytest.approx(s)


# ------------------------------------------------------------------------------------------------ loader

def test_minimal_unit_gets_documented_defaults(tmp_path):
    config = load(tmp_path, {"web": 'command = ["sleep", "1"]\n'})
    u = config.units["web"]
    assert u.command == ("sleep", "1")
    assert u.enabled and u.requires == () and u.after == () and u.provides == ()
    assert (u.restart.policy, u.restart.delay, u.restart.max_delay, u.restart.max_restarts) == (
        "on-failure", 1.0, 60.0, 5)
    assert (u.restart.reset_after, u.restart.window, u.restart.on_give_up) == (600.0, 600.0, "fail")
    assert (u.stop.signal, u.stop.timeout) == (int(signal.SIGTERM), 10.0)
    assert (u.log.max_bytes, u.log.backups, u.log.file) == (50 * 1024**2, 5, None)
    assert (u.ready.mode, u.ready.timeout, u.ready.interval, u.ready.has_checks) == ("all", 120.0, 1.0, False)
    assert u.sources == (tmp_path / "services.d" / "web.toml",)
    assert config.stack.root == tmp_path.resolve() and config.stack.file is None


def test_full_unit_is_read(tmp_path):
    config = load(tmp_path, {"web": '''
        command = ["python3", "-u", "app.py"]
        env = { PORT = 8080, RATIO = 0.5, NAME = "x" }
        requires = ["db"]
        after = ["cache"]
        gpu = "embed"
        vram_mib = 2000
        [when]
        runtime_backend = ["hf", "vllm"]
        same_gpu = false
        [ready]
        http = { url = "http://127.0.0.1:1/x", method = "POST", expect = "ok" }
        mode = "any"
        [stop]
        signal = "SIGINT"
        timeout = "1m"
        [[on_log]]
        match = "CUDA out of memory"
        action = "abort"
        count = 2
        within = "30s"
        ''', "db": 'command = ["db"]\n', "cache": 'command = ["c"]\n'})
    u = config.units["web"]
    assert dict(u.env) == {"PORT": "8080", "RATIO": "0.5", "NAME": "x"}
    assert u.when == {"runtime_backend": ("hf", "vllm"), "same_gpu": (False,)}
    assert (u.ready.http.url, u.ready.http.method, u.ready.http.expect) == ("http://127.0.0.1:1/x", "POST", "ok")
    assert (u.stop.signal, u.stop.timeout) == (int(signal.SIGINT), 60.0)
    assert [(r.match, r.action, r.count, r.within) for r in u.on_log] == [("CUDA out of memory", "abort", 2, 30.0)]
    assert (u.gpu, u.vram_mib) == ("embed", 2000)


def test_stack_file_is_read(tmp_path):
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "web.toml").write_text('command = ["x"]\n')
    config = load_config(cwd=make_stack(tmp_path, {}, '''
        [stack]
        name = "qa"
        services = "units"
        stop_budget = "45s"
        echo = false
        [plan]
        runtime_backend = "vllm"
        tensor_parallel = 2
        '''))
    assert list(config.units) == ["web"]
    assert (config.stack.name, config.stack.stop_budget, config.stack.echo) == ("qa", 45.0, False)
    assert dict(config.stack.plan) == {"runtime_backend": "vllm", "tensor_parallel": 2}


def test_every_problem_of_a_run_at_once(tmp_path):
    found = problems(tmp_path, {
        "a": 'command = ["x"]\nbogus = 1\n[restart]\ndelay = "soon"\n',
        "b": 'command = "x"\nrequires = ["zzz"]\n',
        "c": "command = [",
    })
    keys = sorted(f.split(": ")[0] + ": " + f.split(": ")[1] for f in found)
    assert keys == ["services.d/a.toml: bogus", "services.d/a.toml: restart.delay", "services.d/b.toml: command",
                    "services.d/b.toml: requires", "services.d/c.toml: -"]


def test_unknown_key_suggests_the_closest(tmp_path):
    assert problems(tmp_path, {"web": 'command = ["x"]\nrequries = ["a"]\n'}) == [
        "services.d/web.toml: requries: unknown key (did you mean 'requires'?)"]


def test_a_problem_per_file_never_hides_other_units(tmp_path):
    """A unit with a broken file still counts as known: depending on it is not a second problem."""
    found = problems(tmp_path, {"web": 'command = ["x"]\nrequires = ["db"]\n', "db": b"\xff".decode("latin-1")})
    assert len(found) == 1 and found[0].startswith("services.d/db.toml: -: ")


# ------------------------------------------------------------------------------------------------ expansion

def test_expand_forms():
    env = {"A": "1", "EMPTY": "", "SP": "x y"}
    assert expand("${A}", env) == "1"
    assert expand("${MISSING:-d}", env) == "d"
    assert expand("${EMPTY:-d}", env) == "d"
    assert expand("${A:-d}", env) == "1"
    assert expand("${MISSING:-}", env) == ""
    assert expand("$$", env) == "$"
    assert expand("$${A}", env) == "${A}"
    assert expand("$A and $SP", env) == "$A and $SP"
    assert expand("${EMPTY}", env) == ""
    assert expand("pre-${A}-${SP}-post", env) == "pre-1-x y-post"
    assert expand("no dollars", env) == "no dollars"
    with pytest.raises(UnknownVariable) as e:
        expand("${A}/${NOPE}", env)
    assert e.value.name == "NOPE"


def test_argv_elements_are_never_split_or_joined(tmp_path):
    r, found = resolve(tmp_path, '''
        command = ["/bin/sh", "-c", "echo ${WORDS} $HOME", "${EMPTY}", "${WORDS}"]
        env = { WORDS = "two words; rm -rf /", EMPTY = "" }
        ''')
    assert found == []
    assert r.argv == ("/bin/sh", "-c", "echo two words; rm -rf / $HOME", "", "two words; rm -rf /")


def test_env_files_feed_expansion(tmp_path):
    r, found = resolve(tmp_path, '''
        command = ["serve", "--port", "${PORT}", "--host", "${HOST:-0.0.0.0}"]
        env_files = ["a.env", "b.env"]
        env = { URL = "http://${HOST}:${PORT}/" }
        cwd = "${WORKDIR}"
        [ready]
        http = "http://127.0.0.1:${PORT}/health"
        tcp = "127.0.0.1:${PORT}"
        ''', files={"a.env": "PORT=8000\nHOST=h1\nWORKDIR=srv\n", "b.env": "export PORT=9000\n"})
    assert found == []
    assert r.argv == ("serve", "--port", "9000", "--host", "h1")   # the later env file wins
    assert r.env["URL"] == "http://h1:9000/" and r.env["PORT"] == "9000"
    assert r.cwd == tmp_path.resolve() / "srv"
    assert r.ready.http.url == "http://127.0.0.1:9000/health" and r.ready.tcp == ("127.0.0.1", 9000)


def test_precedence_environ_env_files_unit_env(tmp_path):
    r, found = resolve(tmp_path, '''
        command = ["${A}", "${B}", "${C}", "${QASUP_SERVICE}", "${QASUP_PYTHON}"]
        env_files = [".env"]
        env = { C = "unit" }
        ''', environ={"A": "environ", "B": "environ", "C": "environ"}, files={".env": "B=file\nC=file\n"})
    assert found == []
    assert r.argv == ("environ", "file", "unit", "web", sys.executable)


def test_plan_results_win(tmp_path):
    r, found = resolve(tmp_path, 'command = ["${RUNTIME_BACKEND}"]\nenv = { RUNTIME_BACKEND = "mine" }\n',
                       plan_env={"RUNTIME_BACKEND": "vllm"})
    assert found == [] and r.argv == ("vllm",)


def test_unknown_names_are_errors_everywhere(tmp_path):
    r, found = resolve(tmp_path, '''
        command = ["${C1}"]
        cwd = "${C2}"
        env = { X = "${C3}" }
        requires_paths = ["${C4}"]
        [log]
        file = "${C5}.log"
        [ready]
        http = { url = "http://${C6}/", expect = "${C7}" }
        exec = ["${C8}"]
        [prepare]
        command = ["${C9}"]
        [[on_log]]
        match = "x"
        message = "${C10}"
        ''')
    assert r is None
    assert [f.split(":")[0] for f in found] == [
        "env.X", "command", "cwd", "log.file", "requires_paths", "prepare.command", "ready.http.url",
        "ready.http.expect", "ready.exec", "on_log[1].message"]
    assert all("unknown variable ${C" in f for f in found)


def test_pid_file_is_expanded_relative_to_cwd(tmp_path):
    r, found = resolve(tmp_path, '''
        command = ["nginx"]
        type = "forking"
        cwd = "srv"
        pid_file = "${RUN}/nginx.pid"
        env = { RUN = "run" }
        ''')
    assert found == [] and r.pid_file == tmp_path / "srv" / "run" / "nginx.pid"
    r, found = resolve(tmp_path, 'command = ["nginx"]\ntype = "forking"\npid_file = "/var/run/${NOPE}.pid"\n')
    assert r is None and found == ["pid_file: unknown variable ${NOPE}: define it in env, an env file, the "
                                   "environment, or write ${NOPE:-default}"]


def test_missing_env_file_is_an_error(tmp_path):
    r, found = resolve(tmp_path, 'command = ["x"]\nenv_files = ["nope.env"]\n')
    assert r is None and found[0].startswith("env_files: ") and "no such file" in found[0]


def test_stack_env_file_may_be_missing_before_the_first_up(tmp_path):
    """The stack's own .env is written by the plan at ``up``: its absence is not an error."""
    r, found = resolve(tmp_path, 'command = ["x"]\nenv_files = [".env"]\n')
    assert found == [] and r.argv == ("x",)


# ------------------------------------------------------------------------------------------------ drop-ins

def test_merge_tables_recursively_arrays_replaced():
    base = {"command": ["a", "b"], "env": {"A": "1", "B": "2"}, "ready": {"http": {"url": "u", "method": "GET"}},
            "restart": {"delay": "1s"}}
    over = {"command": ["c"], "env": {"B": "3"}, "ready": {"http": {"method": "POST"}}, "restart": "x"}
    assert merge(base, over) == {"command": ["c"], "env": {"A": "1", "B": "3"},
                                 "ready": {"http": {"url": "u", "method": "POST"}}, "restart": "x"}
    assert base["env"] == {"A": "1", "B": "2"}  # inputs are not changed


def test_dropins_merge_key_by_key_in_name_order(tmp_path):
    config = load(tmp_path, {"web": '''
        command = ["serve", "--old"]
        env = { A = "unit", B = "unit" }
        [restart]
        delay = "1s"
        max_delay = "10s"
        [[on_log]]
        match = "old"
        '''}, files={
        "services.d/web.d/20-late.toml": 'env = { B = "late" }\n[restart]\nmax_delay = "30s"\n',
        "services.d/web.d/10-early.toml": ('command = ["serve", "--new"]\nenv = { B = "early", C = "early" }\n'
                                           '[restart]\nmax_delay = "20s"\npolicy = "always"\n'
                                           '[[on_log]]\nmatch = "new"\n'),
        "services.d/web.d/notes.txt": "not a drop-in",
    })
    u = config.units["web"]
    assert u.command == ("serve", "--new")
    assert dict(u.env) == {"A": "unit", "B": "late", "C": "early"}
    assert (u.restart.delay, u.restart.max_delay, u.restart.policy) == (1.0, 30.0, "always")
    assert [r.match for r in u.on_log] == ["new"]   # arrays (of tables too) are replaced
    d = tmp_path / "services.d"
    assert u.sources == (d / "web.toml", d / "web.d" / "10-early.toml", d / "web.d" / "20-late.toml")


def test_stack_dropin_folders_apply_after_services_d(tmp_path):
    config = load(tmp_path, {"web": 'command = ["x"]\ndescription = "unit"\n',
                             "db": 'command = ["db"]\n'},
                  '[stack]\ndropins = ["site", "local"]\n', files={
                      "services.d/web.d/10.toml": 'description = "services.d"\n',
                      "site/web.d/10.toml": 'description = "site"\nenabled = false\n',
                      "local/web.d/10.toml": 'description = "local"\n',
                      "site/db.d/10.toml": '[stop]\ntimeout = "3s"\n'})
    assert config.units["web"].description == "local"
    assert config.units["web"].enabled is False
    assert config.units["db"].stop.timeout == 3.0
    assert [p.relative_to(tmp_path).as_posix() for p in config.units["web"].sources] == [
        "services.d/web.toml", "services.d/web.d/10.toml", "site/web.d/10.toml", "local/web.d/10.toml"]


def test_dropin_problems_name_the_dropin(tmp_path):
    found = problems(tmp_path, {"web": 'command = ["x"]\n[ready]\nlog = "up"\n', "db": 'command = ["y"]\n'},
                     files={"services.d/web.d/10.toml": '[ready]\nlog = "("\n[stop]\nsignal = "NOPE"\n',
                            "services.d/web.d/20.toml": 'requires = ["dbb"]\n[[on_log]]\nmatch = "x"\nbad = 1\n',
                            "services.d/ghost.d/10.toml": "enabled = false\n"})
    heads = sorted(": ".join(f.split(": ")[:2]) for f in found)
    assert heads == ["services.d/ghost.d: -", "services.d/web.d/10.toml: ready.log",
                     "services.d/web.d/10.toml: stop.signal", "services.d/web.d/20.toml: on_log[1].bad",
                     "services.d/web.d/20.toml: requires"]


def test_dropin_replacing_a_table_takes_its_problems(tmp_path):
    """A key the unit file wrote stays the unit file's, even when a drop-in adds keys beside it."""
    found = problems(tmp_path, {"web": 'command = ["x"]\n[restart]\ndelay = "never"\n'},
                     files={"services.d/web.d/10.toml": '[restart]\npolicy = "always"\n'})
    assert found == ["services.d/web.toml: restart.delay: 'never' is not a duration such as \"500ms\", "
                     "\"10s\", \"5m\" or \"1h\""]
