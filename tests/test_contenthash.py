"""Content hashes for ``[prepare] when_changed`` (supervisor.proc.contenthash)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from supervisor.proc.contenthash import hash_paths


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "FastChat"
    (root / "fastchat" / "serve").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'fschat'\n")
    (root / "fastchat" / "conversation.py").write_text("TEMPLATES = {}\n")
    (root / "fastchat" / "serve" / "vllm_worker.py").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return root


def test_stable_when_nothing_changes(tree: Path) -> None:
    first = hash_paths([tree])
    assert hash_paths([tree]) == first
    assert hash_paths([str(tree)]) == first
    assert len(first) == 64 and int(first, 16) >= 0


def test_changes_with_content(tree: Path) -> None:
    before = hash_paths([tree])
    target = tree / "fastchat" / "conversation.py"
    target.write_text("TEMPLATES = {'qwen': 1}\n")
    changed = hash_paths([tree])
    assert changed != before
    target.write_text("TEMPLATES = {}\n")
    assert hash_paths([tree]) == before  # content, not mtimes


def test_changes_in_a_large_file_past_the_first_block(tree: Path) -> None:
    big = tree / "fastchat" / "serve" / "vllm_worker.py"
    before = hash_paths([tree])
    data = bytearray(big.read_bytes())
    data[-1] ^= 1
    big.write_bytes(bytes(data))
    assert hash_paths([tree]) != before


def test_changes_with_names_and_structure(tree: Path) -> None:
    seen = {hash_paths([tree])}
    (tree / "pyproject.toml").rename(tree / "setup.toml")  # same content, new name
    seen.add(hash_paths([tree]))
    (tree / "empty").mkdir()
    seen.add(hash_paths([tree]))
    (tree / "empty" / "new.py").write_text("")
    seen.add(hash_paths([tree]))
    assert len(seen) == 4


def test_missing_paths_hash_distinctly(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    empty_file = tmp_path / "empty_file"
    empty_file.write_bytes(b"")
    hashes = {hash_paths([missing]), hash_paths([empty_dir]), hash_paths([empty_file]), hash_paths([])}
    assert len(hashes) == 4
    assert hash_paths([missing]) == hash_paths([tmp_path / "other_missing"])  # missing is missing
    assert hash_paths([missing, empty_dir]) != hash_paths([empty_dir, missing])


def test_a_file_moved_between_listed_paths_changes_the_hash(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("1")
    before = hash_paths([a, b])
    (a / "x").rename(b / "x")
    assert hash_paths([a, b]) != before


def test_symlinks_are_not_followed(tree: Path) -> None:
    (tree / "loop").symlink_to(tree)  # a loop if followed
    (tree / "fastchat" / "up").symlink_to("..")
    (tree / "dangling").symlink_to(tree / "no-such-file")
    first = hash_paths([tree])
    assert hash_paths([tree]) == first
    (tree / "dangling").unlink()
    (tree / "dangling").symlink_to(tree / "another-target")
    assert hash_paths([tree]) != first  # the link's target text counts


def test_fifo_is_not_opened(tree: Path) -> None:
    # Hash in a child with a deadline: opening a FIFO for reading would block forever.
    os.mkfifo(tree / "pipe")
    code = "import sys; from supervisor.proc.contenthash import hash_paths; print(hash_paths([sys.argv[1]]))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code, str(tree)], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 64


def test_byproducts_are_ignored(tree: Path) -> None:
    before = hash_paths([tree])
    cache = tree / "fastchat" / "__pycache__"
    cache.mkdir()
    (cache / "conversation.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (tree / "fschat.egg-info").mkdir()
    (tree / "fschat.egg-info" / "SOURCES.txt").write_text("x\n")
    (tree / "stray.pyc").write_bytes(b"")
    assert hash_paths([tree]) == before
    assert hash_paths([tree], ignore=()) != before


def _hash_as_unprivileged(paths: list[Path]) -> str:
    """hash_paths in a forked child that has dropped to ``nobody`` (root reads files whatever their mode).

    Forked, not exec'd: the interpreter may live where ``nobody`` cannot run it (e.g. under /root)."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, hash, report, exit without running pytest's clean-up
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(write_fd, hash_paths(paths).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and len(out) == 64, out
    return out


def test_unreadable_file_differs_but_is_not_an_error() -> None:
    # a tree the unprivileged child can walk (pytest's tmp folders are private to root)
    base = Path(tempfile.mkdtemp(prefix="qasup-hash-", dir="/tmp"))
    try:
        base.chmod(0o755)
        root = base / "FastChat"
        (root / "fastchat").mkdir(parents=True)
        (root / "pyproject.toml").write_text("[project]\nname = 'fschat'\n")
        (root / "fastchat" / "conversation.py").write_text("TEMPLATES = {}\n")
        target = root / "pyproject.toml"
        hash_ = _hash_as_unprivileged if os.geteuid() == 0 else (lambda paths: hash_paths(paths))
        before = hash_([root])
        assert before == hash_paths([root])
        target.chmod(0)
        try:
            unreadable = hash_([root])
        finally:
            target.chmod(0o644)
        assert unreadable != before
        assert hash_([root]) == before
    finally:
        shutil.rmtree(base, ignore_errors=True)
