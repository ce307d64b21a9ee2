"""The container files, checked without a container runtime (fast; tests/container/run.sh runs them for real).

* the stop grace period is one figure, stop_budget + 15 s, wherever it is stated;
* the Dockerfile: the Python check tests what the build needs, no build leftovers reach the image, the demo is
  shipped and runnable with qasup's own python, the HEALTHCHECK; .dockerignore sends what the Dockerfile copies;
* the compose file (examples/compose): QAnything master's stack with qasup's command, healthcheck, grace period,
  GPUs and volumes; its command is accepted by qasup; `docker-compose config` accepts it where installed.

The compose file is read by a small parser of the YAML subset it is written in (block mappings and sequences,
one-line scalars, flow sequences), so no YAML library is needed; where PyYAML exists (in this interpreter or in
the system python), the parser's result is compared with ``yaml.safe_load``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from supervisor.protocol import parse_duration

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "examples" / "compose" / "docker-compose.yaml"
CONTAINER_DOC = ROOT / "docs" / "container.md"
DEMO = ROOT / "examples" / "demo"
MARGIN_S = 15           # the grace period is stop_budget + MARGIN_S
TIMEOUT = 60            # generous: the machine is shared


def grace_figure() -> int:
    budget = parse_duration(tomllib.loads((ROOT / "qasup.toml").read_text())["stack"]["stop_budget"])
    return int(budget) + MARGIN_S


# ------------------------------------------------------------------------------------- the grace period

# Every way the files state the figure; in prose, the first number after "grace period" on its line, unless
# "stop_budget" comes first (the derivation, "stop_budget + 15 s", states the margin, not the figure).
FIGURE_PATTERNS = (
    r"stop_grace_period:\s*[\"']?(\d+)s\b",
    r"--stop-timeout[ =](\d+)\b",
    r"\b(?:docker|podman)(?:-compose| compose)? stop\b[^\n`]*?(?:-t|--time|--timeout)[ =](\d+)\b",
    r"grace period(?:(?!stop_budget)[^0-9\n]){0,40}?\b(\d+) ?s\b",   # (not "stop_budget + 15 s")
    r"^GRACE=(\d+)\b",
)
FIGURE_FILES = ("Dockerfile", "examples/compose/docker-compose.yaml", "docs/container.md", "docs/units.md",
                "qasup.toml", "tests/container/run.sh", "README.md")


def stated_figures(text: str) -> list[tuple[int, str]]:
    found = []
    for pattern in FIGURE_PATTERNS:
        for m in re.finditer(pattern, text, re.IGNORECASE | re.MULTILINE):
            line = text[text.rfind("\n", 0, m.start()) + 1:text.find("\n", m.end()) % (len(text) + 1)]
            found.append((int(m.group(1)), line.strip()))
    return found


def test_figure_patterns_find_each_form() -> None:
    text = ("stop_grace_period: 75s\n--stop-timeout 76\ndocker stop -t 77 c\nthe grace period must exceed it (78 s)\n"
            "GRACE=79\nthe stop grace period above the stack's 60 s budget\n"
            "the grace period is stop_budget + 15 s\n")
    assert sorted(n for n, _ in stated_figures(text)) == [60, 75, 76, 77, 78, 79]


@pytest.mark.parametrize("name", FIGURE_FILES)
def test_grace_period_is_one_figure(name: str) -> None:
    figure = grace_figure()
    found = stated_figures((ROOT / name).read_text())
    assert found, f"{name} states no stop grace period (expected {figure} s = stop_budget + {MARGIN_S} s)"
    wrong = sorted({line for n, line in found if n != figure})
    assert not wrong, f"{name}: the grace period is {figure} s (stop_budget + {MARGIN_S} s), not as in: {wrong}"


def test_demo_fits_the_grace_period() -> None:
    demo_budget = parse_duration(tomllib.loads((DEMO / "qasup.toml").read_text())["stack"]["stop_budget"])
    assert demo_budget + MARGIN_S <= grace_figure()


# ------------------------------------------------------------------------------------------ the Dockerfile

def dockerfile_stages() -> list[tuple[str, list[str]]]:
    """(stage name or "", instructions with continuation lines joined), one entry per FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
            stages.append(((m.group(1) or "") if m else "", [line]))
        elif stages:
            stages[-1][1].append(line)
    return stages


def test_dockerfile_python_check_tests_what_the_build_needs() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    m = re.search(r"if ! \"\$\{QASUP_PYTHON\}\" -c 'import ensurepip, venv'[^;]*; then(.*?)fi;", text, re.DOTALL)
    assert m, "the build must test `\"${QASUP_PYTHON}\" -c 'import ensurepip, venv'` before installing"
    assert '"${QASUP_PYTHON}-venv"' in m.group(1) and "apt-get install" in m.group(1)


def test_dockerfile_leaves_no_build_files_in_the_image() -> None:
    stages = dockerfile_stages()
    final = stages[-1][1]
    copies = [i for i in final if i.upper().startswith(("COPY", "ADD"))]
    assert any(re.match(r"COPY --from=\S+ /opt/qasup /opt/qasup$", i) for i in copies), copies
    for i in copies:
        assert not re.search(r"\b(supervisor|pyproject\.toml)\b", i), f"source copied into the image: {i}"
    assert not any("pip install" in i for i in final), "pip runs in the final stage (it leaves build/, egg-info)"
    builders = [name for name, body in stages[:-1] if any("pip install" in i for i in body)]
    assert builders, "qasup is built in a stage of its own"


def test_dockerfile_ships_the_demo_runnable_from_the_image() -> None:
    final = dockerfile_stages()[-1][1]
    assert "COPY examples /workspace/examples" in final
    assert "COPY services.d /workspace/services.d" in final
    demo_stack = tomllib.loads((DEMO / "qasup.toml").read_text())["stack"]
    assert os.path.normpath(os.path.join("/workspace/examples/demo", demo_stack["services"])) == "/workspace/services.d"
    # The stand-ins run with qasup's own python: the image need not have any other one.
    for path in sorted((DEMO / "dropins").glob("*.d/*.toml")):
        unit = tomllib.loads(path.read_text())
        for command in (unit.get("command"), unit.get("prepare", {}).get("command")):
            if command is not None:
                assert command[0] == "${QASUP_PYTHON}", f"{path.relative_to(ROOT)}: runs {command[0]}"
    run = "--config /workspace/examples/demo/qasup.toml up"
    assert run in DOCKERFILE.read_text() and run in CONTAINER_DOC.read_text()


def test_dockerfile_healthcheck_and_entrypoint() -> None:
    final = dockerfile_stages()[-1][1]
    health = [i for i in final if i.startswith("HEALTHCHECK")]
    assert len(health) == 1 and health[0].endswith('CMD ["qasup", "wait-ready", "--timeout", "0"]'), health
    assert 'ENTRYPOINT ["qasup"]' in final and "STOPSIGNAL SIGTERM" in final


def test_podman_build_is_documented_with_format_docker() -> None:
    files = [ROOT / "README.md", DOCKERFILE, COMPOSE, *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "tests" / "container").glob("*.sh"))]
    bad = [f"{p.relative_to(ROOT)}: {line.strip()}" for p in files for line in p.read_text().splitlines()
           if re.search(r"\b(?:podman|pm) build\b", line) and "--format docker" not in line]
    assert not bad, f"podman's default OCI format drops HEALTHCHECK: say --format docker in {bad}"
    assert "podman build --format docker" in CONTAINER_DOC.read_text()


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides (``!`` re-includes)."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        rx = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(rx.replace(r"\?", "[^/]"), p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_dockerfile_copies() -> None:
    run_output = {"__pycache__", ".qasup", "logs"}         # what a run of the demo leaves in examples/
    needed = [p for top in ("supervisor", "services.d", "examples/demo", "examples/standins")
              for p in (ROOT / top).rglob("*")
              if p.is_file() and p.suffix != ".pyc" and p.name != ".env"
              and not (run_output if top.startswith("examples") else {"__pycache__"})
              & set(p.relative_to(ROOT / top).parts[:-1])]
    needed += [ROOT / "qasup.toml", ROOT / "pyproject.toml", ROOT / "README.md"]
    assert any(p.parts[-2:] == ("logs", "__init__.py") for p in needed)   # supervisor/logs is a package
    missing = [str(p.relative_to(ROOT)) for p in needed if dockerignore_excludes(str(p.relative_to(ROOT)))]
    assert not missing, f".dockerignore leaves out files the image needs: {missing}"
    for junk in ("supervisor/__pycache__/a.cpython-311.pyc", "qasup.egg-info/PKG-INFO", "build/lib/x.py",
                 "examples/demo/.qasup/qasup.sock", "examples/demo/logs/sanic.log", "examples/demo/.env",
                 ".venv/bin/python", "tests/test_x.py"):
        assert dockerignore_excludes(junk), junk


def test_container_scripts_are_valid_shell() -> None:
    for script in ("run.sh", "make-base.sh", "common.sh"):
        path = ROOT / "tests" / "container" / script
        done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
        if script != "common.sh":
            assert os.access(path, os.X_OK), f"{script} is not executable"


# ---------------------------------------------------------------------------------- the compose file

class ComposeSyntaxError(ValueError):
    pass


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'" and (i == 0 or line[i - 1] in " [,"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str, where: str) -> object:
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError as e:
            raise ComposeSyntaxError(f"{where}: write flow sequences as JSON arrays: {text}") from e
    if text[0] in "&*!|>{":
        raise ComposeSyntaxError(f"{where}: anchors, tags, block scalars and flow mappings are not used here")
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    return text


_KEY = re.compile(r"""^([A-Za-z0-9_.\-]+|"[^"]*"|'[^']*'):(?: +(.*))?$""")


def parse_compose(text: str) -> object:
    """The YAML subset the compose file is written in; anything else raises ComposeSyntaxError."""
    lines: list[tuple[int, str, int]] = []
    pending = ""
    for no, raw in enumerate(text.splitlines(), 1):
        body = _strip_comment(raw)
        if pending:
            pending += " " + body.strip()
        elif body.strip() and body.strip() != "---":
            pending, start, indent = body.strip(), no, len(body) - len(body.lstrip(" "))
        if pending and pending.count("[") == pending.count("]"):
            lines.append((indent, pending, start))
            pending = ""
    if pending:
        raise ComposeSyntaxError(f"line {start}: unclosed [")

    def block(i: int, indent: int) -> tuple[object, int]:
        if lines[i][1] == "-" or lines[i][1].startswith("- "):
            items: list[object] = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
                rest, no = lines[i][1][1:].strip(), lines[i][2]
                if _KEY.match(rest):
                    lines[i] = (indent + 2, rest, no)
                    value, i = block(i, indent + 2)
                else:
                    value, i = _scalar(rest, f"line {no}"), i + 1
                items.append(value)
            return items, i
        mapping: dict[str, object] = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            m = _KEY.match(lines[i][1])
            if not m:
                raise ComposeSyntaxError(f"line {lines[i][2]}: not a `key: value` line: {lines[i][1]}")
            key = str(_scalar(m.group(1), f"line {lines[i][2]}"))
            if key in mapping:
                raise ComposeSyntaxError(f"line {lines[i][2]}: {key} given twice")
            if m.group(2):
                mapping[key], i = _scalar(m.group(2), f"line {lines[i][2]}"), i + 1
            elif i + 1 < len(lines) and (lines[i + 1][0] > indent or lines[i + 1][1].startswith("- ")
                                         and lines[i + 1][0] == indent):
                mapping[key], i = block(i + 1, lines[i + 1][0])
            else:
                mapping[key], i = None, i + 1
        if i < len(lines) and lines[i][0] > indent:
            raise ComposeSyntaxError(f"line {lines[i][2]}: unexpected indentation")
        return mapping, i

    value, end = block(0, lines[0][0])
    if end != len(lines):
        raise ComposeSyntaxError(f"line {lines[end][2]}: unexpected dedent")
    return value


def compose() -> dict:
    data = parse_compose(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _stringify(value: object) -> object:
    """YAML's own scalars as the text they were written as (the subset parser keeps every scalar a string)."""
    if isinstance(value, dict):
        return {str(k): _stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify(v) for v in value]
    return value if isinstance(value, str) or value is None else str(value).lower() if isinstance(value, bool) \
        else str(value)


def test_compose_parser_agrees_with_yaml() -> None:
    probe = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read()), default=str))"
    for python in (sys.executable, "/usr/bin/python3"):
        if not Path(python).exists():
            continue
        done = subprocess.run([python, "-c", probe], input=COMPOSE.read_text(), capture_output=True, text=True,
                              timeout=TIMEOUT)
        if done.returncode == 0:
            assert _stringify(json.loads(done.stdout)) == compose()
            return
    pytest.skip("no python with PyYAML here (the subset parser alone checked the file)")


def test_compose_parser_refuses_what_it_does_not_know() -> None:
    for bad in ("a: &x 1\n", "a: |\n  text\n", "a:\n  b: 1\n   c: 2\n", "a: [1,\n"):
        with pytest.raises(ComposeSyntaxError):
            parse_compose(bad)
    assert parse_compose("a:\n- x\n- k: v\n  j: [\"1\"]\nb: 'it''s' # c\n") == {
        "a": ["x", {"k": "v", "j": ["1"]}], "b": "it's"}


RUN_SH_FLAGS = {"-c": "LLM_API", "-i": "DEVICE_ID", "-b": "RUNTIME_BACKEND", "-m": "MODEL_NAME",
                "-s": "MODEL_SIZE", "-t": "CONV_TEMPLATE", "-p": "TP", "-r": "GPU_MEM_UTILI"}


def test_compose_is_masters_stack_with_qasup() -> None:
    services = compose()["services"]
    assert set(services) == {"elasticsearch", "etcd", "minio", "standalone", "mysql", "qanything_local"}
    q = services["qanything_local"]
    assert q["image"] == "${QASUP_IMAGE:-qanything-qasup}"
    assert q["healthcheck"]["test"] == ["CMD", "qasup", "wait-ready", "--timeout", "0"]
    assert parse_duration(q["stop_grace_period"]) == grace_figure()
    assert q["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert q["volumes"] == ["${DOCKER_VOLUME_DIRECTORY:-.}/assets/custom_models:/model_repos/CustomLLM",
                            "${DOCKER_VOLUME_DIRECTORY:-.}/:/workspace/qanything_local/"]
    assert q["shm_size"] == "8gb" and "8777:8777" in q["ports"]
    command = q["command"]
    assert isinstance(command, list) and command[0] == "up", "exec form, run by the image's qasup entrypoint"
    assert not any("sleep" in c or "run_for_" in c for c in command)
    flags = dict(zip(command[1::2], command[2::2]))
    assert set(flags) == set(RUN_SH_FLAGS)
    for flag, var in RUN_SH_FLAGS.items():
        assert re.fullmatch(r"\$\{" + var + r":-[^}]*\}", flags[flag]), (flag, flags[flag])


def _expand(command: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), c) for c in command]


@pytest.mark.parametrize("dotenv", [
    {},
    {"LLM_API": "local", "DEVICE_ID": "0", "RUNTIME_BACKEND": "vllm", "MODEL_NAME": "Qwen-7B-Chat",
     "MODEL_SIZE": "7B", "CONV_TEMPLATE": "qwen-7b-chat", "TP": "1", "GPU_MEM_UTILI": "0.81"},
], ids=["defaults", "vllm"])
def test_compose_command_is_accepted_by_qasup(dotenv: dict[str, str]) -> None:
    """The compose command, its variables as run.sh's .env sets them, given to `qasup plan` on the demo."""
    args = _expand(compose()["services"]["qanything_local"]["command"], dotenv)
    env = {k: v for k, v in os.environ.items() if k not in ("QASUP_GPUS", "QASUP_SOCKET")}
    done = subprocess.run([sys.executable, "-m", "supervisor", "--config", str(DEMO / "qasup.toml"), "plan",
                           *args[1:]], capture_output=True, text=True, env=env, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "plan: feasible" in done.stdout


def test_compose_config_by_docker_compose() -> None:
    if shutil.which("docker-compose"):
        argv = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                   timeout=TIMEOUT).returncode == 0:
        argv = ["docker", "compose"]
    else:
        pytest.skip("neither docker-compose nor docker compose is installed (tests/container/run.sh installs it)")
    done = subprocess.run([*argv, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=COMPOSE.parent, env={**os.environ, "COMPOSE_PROJECT_NAME": "qasup-check"})
    assert done.returncode == 0, done.stderr
    assert re.search(rf"stop_grace_period: ['\"]?(?:{grace_figure()}s|1m{grace_figure() - 60}s)", done.stdout)
    assert "wait-ready" in done.stdout and "driver: nvidia" in done.stdout
