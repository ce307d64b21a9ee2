"""``qasup check`` on a corpus of broken stacks, run as a subprocess: the user's view.

Each folder under ``tests/corpus/`` is a small stack. Its ``expected.txt`` lists, one per line, the problems
``qasup check`` must print, as ``FILE: KEY`` or ``FILE: KEY: start of the message`` (FILE relative to the case
folder; ``#`` lines are comments). The run must print exactly these problems (no more, no fewer), exit 2,
end with the ``N problems found`` summary, and never show a traceback.

Speed: a CLI start-up imports for ~0.2 s of CPU and a check then takes ~10 ms, so the cases are checked by ONE
process that imports the command line once and forks a child per case (:data:`RUNNER`): each child is a
``qasup check`` in the case's folder, with its own stdout, stderr and exit code, exactly as ``python -m
supervisor check`` would run from there. The tests below the corpus still run the real ``python -m supervisor``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QASUP_TIMEOUT, qasup

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.txt").is_file())


def _expected(case: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in (case / "expected.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            file, key, *rest = line.split(": ", 2) + [""]
            out.append((file, key, rest[0]))
    return out


def _reported(stderr: str, root: Path) -> list[tuple[str, str, str]]:
    out = []
    prefixes = sorted({str(root) + "/", str(root.resolve()) + "/"}, key=len, reverse=True)
    for line in stderr.splitlines():
        if line.startswith("qasup: ") and line.endswith("found"):
            continue
        for p in prefixes:
            line = line.replace(p, "")
        file, key, message = (line.split(": ", 2) + ["", ""])[:3]
        out.append((file, key, message))
    return out


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


# One line per case on stdin (the case's folder, the stdout file, the stderr file, tab-separated): a forked child
# runs ``qasup check`` there as ``python -m supervisor check`` does (supervisor/__main__.py: ``raise
# SystemExit(main())``, a traceback and exit 1 for an exception); one JSON line per case (its exit code) on stdout.
RUNNER = r'''
import json, os, sys, traceback
from supervisor.cli.main import main
import supervisor
import supervisor.cli.config_verbs  # noqa: F401  (imported by `check` itself; once here for every case)
for line in sys.stdin:
    root, out, err = line.rstrip("\n").split("\t")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(root)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.argv = [os.path.join(os.path.dirname(supervisor.__file__), "__main__.py"), "check"]
            try:
                code = main()
            except SystemExit as e:
                code = e.code
            except BaseException:
                traceback.print_exc()
                code = 1
            if code is None:
                code = 0
            elif not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"root": root, "code": os.waitstatus_to_exitcode(status)}), flush=True)
'''


@pytest.fixture(scope="module")
def check_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """``qasup check`` of every selected case (one forked child each of a process that imported qasup once)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params]
    base = tmp_path_factory.mktemp("corpus")
    lines = []
    for case in selected:
        root = base / case
        shutil.copytree(CORPUS / case, root, symlinks=True)   # cases hold dangling links and link loops
        (root / "expected.txt").unlink()
        lines.append(f"{root}\t{base / (case + '.stdout')}\t{base / (case + '.stderr')}\n")
    env = dict(os.environ, QASUP_GPUS="none")   # as conftest.qasup runs the CLI
    env.pop("QASUP_SOCKET", None)
    runner = subprocess.run([sys.executable, "-c", RUNNER], input="".join(lines), capture_output=True, text=True,
                            env=env, timeout=QASUP_TIMEOUT + 2 * len(selected))
    assert runner.returncode == 0, runner.stderr
    codes = {json.loads(line)["root"]: json.loads(line)["code"] for line in runner.stdout.splitlines()}
    runs = {}
    for case in selected:
        root = base / case
        runs[case] = (root, subprocess.CompletedProcess(["qasup", "check"], codes[str(root)],
                                                         (base / (case + ".stdout")).read_text(),
                                                         (base / (case + ".stderr")).read_text()))
    return runs


@pytest.mark.parametrize("case", CASES)
def test_check_reports_expected_problems(case: str, check_runs):
    root, result = check_runs[case]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.stdout, result.stderr)
    expected = _expected(CORPUS / case)
    reported = _reported(result.stderr, root)
    assert result.stderr.rstrip().endswith(f"{len(reported)} problem{'s' if len(reported) != 1 else ''} found")
    unmatched = list(reported)
    missing = []
    for file, key, start in expected:
        hit = next((r for r in unmatched if r[0] == file and r[1] == key and r[2].startswith(start)), None)
        if hit is None:
            missing.append(f"{file}: {key}: {start}")
        else:
            unmatched.remove(hit)
    assert not missing and not unmatched, (
        "missing:\n  " + "\n  ".join(missing) + "\nunexpected:\n  "
        + "\n  ".join(": ".join(r) for r in unmatched) + "\nstderr:\n" + result.stderr)


def test_plan_reports_the_same_problems(tmp_path: Path):
    """``plan`` goes through the same checks: exit 2 and every problem, not only the first."""
    root = tmp_path / "many-problems"
    shutil.copytree(CORPUS / "many-problems", root, symlinks=True)
    result = qasup("plan", "--json", cwd=root)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert len(_reported(result.stderr, root)) == len(_expected(CORPUS / "many-problems"))


def test_valid_stack_passes(tmp_path: Path):
    """The counterpart: a stack using every table checks clean (exit 0, nothing on stderr)."""
    root = tmp_path / "ok"
    (root / "services.d").mkdir(parents=True, exist_ok=True)
    (root / "services.d" / "db.toml").write_text('command = ["sleep", "1"]\nprovides = ["database"]\n')
    (root / "services.d" / "web.toml").write_text(
        'description = "web"\ncommand = ["python3", "-m", "http.server", "${PORT:-8000}"]\n'
        'env = { PORT = "8001" }\nrequires = ["database"]\nafter = ["gone"]\n'
        '[log]\nmax_bytes = "1MiB"\nbackups = 2\n'
        '[ready]\nlog = "Serving HTTP"\nhttp = { url = "http://127.0.0.1:${PORT}/", method = "GET" }\n'
        'tcp = "127.0.0.1:${PORT}"\nmode = "any"\ntimeout = "30s"\ninterval = "500ms"\n'
        '[restart]\npolicy = "always"\ndelay = "1s"\nmax_delay = "1m30s"\n'
        '[stop]\nsignal = "INT"\ntimeout = "5s"\n'
        '[[on_log]]\nmatch = "Address already in use"\naction = "fail"\nmessage = "port ${PORT} is taken"\n')
    (root / "services.d" / "gone.toml").write_text('command = ["true"]\nenabled = false\n')
    result = qasup("check", cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("ok: 3 units valid, 2 enabled")
