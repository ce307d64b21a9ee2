"""The shipped units against QAnything master, path by path: every file, folder and program a unit in services.d
names (its command, cwd, log file, tailed files, required paths, prepare step; conditional drop-ins included) exists
in master's tree (tests/data/qanything-master-tree.txt, the checkout mounted at /workspace/qanything_local) or in
what the v1.2.x image and compose file provide (tests/data/qanything-image-layout.txt), or is made at start, as
master's run_for_local_option.sh makes it. A unit that differs from the script on purpose says so in its comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config.loader import load_config

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
CHECKOUT = "/workspace/qanything_local/"


def _master() -> tuple[set[str], set[str]]:
    files, folders = set(), set()
    for line in (DATA / "qanything-master-tree.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            (folders if line.endswith("/") else files).add(line.rstrip("/"))
    return files, folders


def _image() -> dict[str, str]:
    out = {}
    for line in (DATA / "qanything-image-layout.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            kind, path = line.split()[:2]
            out[path] = kind
    return out


MASTER_FILES, MASTER_FOLDERS = _master()
IMAGE = _image()
SYSTEM = ("/bin/", "/usr/", "/sbin/", "/dev/", "/proc/", "/tmp/")


def known(path: str) -> bool:
    """Whether an absolute path exists in master's checkout, the image, a mount, or what the script makes."""
    if path.startswith(CHECKOUT):   # the checkout: master's tree, or a folder the script makes in it
        rel = path[len(CHECKOUT):].rstrip("/")
        if rel in MASTER_FILES or rel in MASTER_FOLDERS or rel == "":
            return True
        return any(path.startswith(e) for e, k in IMAGE.items() if k == "script" and e.startswith(CHECKOUT))
    for entry in IMAGE:
        bare = entry.rstrip("/")
        if path.rstrip("/") == bare or (entry.endswith("/") and path.startswith(entry)):
            return True
    return False


def candidates(data_sources) -> list[tuple[str, str]]:
    """(key, absolute path) for every path a unit names, with ``${...}`` cut off (its prefix must exist)."""
    stack_dir = "/workspace/"
    out: list[tuple[str, str]] = []

    def absolute(text: str, cwd: str) -> str:
        text = text.replace("${QASUP_STACK_DIR}/", stack_dir)
        return text if text.startswith("/") else cwd.rstrip("/") + "/" + text

    for spec in data_sources:
        cwd = absolute(spec.cwd, stack_dir) if spec.cwd else stack_dir
        if spec.cwd:
            out.append(("cwd", cwd))
        args = list(spec.command) + (list(spec.prepare.command) if spec.prepare else [])
        for a in args:
            for part in ([a] if " " not in a else []):           # a shell script (sh -c '...') is not one path
                value = part.split("=", 1)[1] if part.startswith("--") and "=" in part else part
                if value.startswith(("-", "http:", "https:")) or "/" not in value:
                    continue
                out.append(("command", absolute(value, cwd)))
        for key, values in (("log.file", [spec.log.file] if spec.log.file else []), ("log.tail", spec.log.tail),
                            ("requires_paths", spec.requires_paths),
                            ("prepare.when_changed", spec.prepare.when_changed if spec.prepare else ())):
            for v in values:
                out.append((key, absolute(v, stack_dir)))
    cut = []
    for key, p in out:
        if "${" in p:
            p = p[: p.index("${")]
            p = p[: p.rfind("/") + 1]
        if p and not p.startswith(SYSTEM) and not p.startswith(stack_dir + "logs"):
            cut.append((key, p))
    return cut


def shipped_units():
    config = load_config(cwd=ROOT)
    for name, unit in config.units.items():
        specs = [unit]
        if unit.conditional is not None:
            from supervisor.config.conditional import unit_with
            from supervisor.errors import Problems
            for f in unit.conditional.when:
                specs.append(unit_with(unit, unit.conditional, {f}, Problems()))
        yield name, specs


UNITS = dict(shipped_units())


@pytest.mark.parametrize("name", sorted(UNITS))
def test_every_path_a_unit_names_exists_in_master_or_the_image(name):
    missing = []
    for key, path in candidates(UNITS[name]):
        if path.startswith(CHECKOUT + "logs/"):
            # log folders: the script makes logs/debug_logs (and fastchat_logs); qasup makes a log file's folder
            assert any(path.startswith(e) for e, k in IMAGE.items() if k == "script"), (name, key, path)
            continue
        if not known(path):
            missing.append(f"{key}: {path}")
    assert not missing, f"{name} names paths that QAnything master and its image do not have: {missing}"


def test_the_listing_is_master_and_has_what_the_script_runs():
    assert "scripts/run_for_local_option.sh" in MASTER_FILES
    assert "qanything_kernel/qanything_server/sanic_api.py" in MASTER_FILES
    assert "third_party/FastChat" in MASTER_FOLDERS
    assert not any(f.startswith("third_party/es/whl") for f in MASTER_FILES)   # only some front-end branches have it


def test_a_made_up_path_is_caught():
    assert not known(CHECKOUT + "third_party/es/whl/elasticsearch-8.12.1-py3-none-any.whl")
    assert not known("/model_repos/QAEnsemble_nope")
    assert known("/model_repos/CustomLLM/") and known(CHECKOUT + "logs/debug_logs/x.log")
