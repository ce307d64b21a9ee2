"""``qasup check`` on a corpus of broken stacks, run as a subprocess: the user's view.

Each folder under ``tests/corpus/`` is a small stack. Its ``expected.txt`` lists, one per line, the problems
``qasup check`` must print, as ``FILE: KEY`` or ``FILE: KEY: start of the message`` (FILE relative to the case
folder; ``#`` lines are comments). The run must print exactly these problems (no more, no fewer), exit 2,
end with the ``N problems found`` summary, and never show a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import qasup

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


@pytest.fixture(scope="module")
def check_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """``qasup check`` of every selected case, run a few at a time (each is a CLI start-up, mostly waiting)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params]
    base = tmp_path_factory.mktemp("corpus")

    def run(case: str) -> tuple[str, tuple[Path, subprocess.CompletedProcess[str]]]:
        root = base / case
        shutil.copytree(CORPUS / case, root, symlinks=True)   # cases hold dangling links and link loops
        (root / "expected.txt").unlink()
        return case, (root, qasup("check", cwd=root))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, selected))


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
