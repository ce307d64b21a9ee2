"""Shared test helpers. Import them directly: ``from conftest import qasup, make_stack``.

* :func:`qasup` runs the real command line (``python -m supervisor ...``) as a subprocess, the user's view.
* :func:`make_stack` writes a stack folder (``services.d/NAME.toml`` per unit, optional ``qasup.toml``).

Names here are used by other test files: keep them stable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

QASUP_TIMEOUT = 30.0
"""Seconds a :func:`qasup` call may take before the test fails (a hung CLI must not hang the suite)."""


def qasup(*args: str, cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
          timeout: float = QASUP_TIMEOUT, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m supervisor ARGS...`` in ``cwd`` and return the finished process (text stdout/stderr).

    ``env`` entries are added to this process's environment (``QASUP_SOCKET`` is dropped from it).
    ``QASUP_GPUS`` defaults to ``none`` so that no test depends on the machine's GPUs; pass
    ``env={"QASUP_GPUS": ...}`` to declare an inventory. Raises ``subprocess.TimeoutExpired`` after
    ``timeout`` seconds (the child is killed).
    """
    full_env = dict(os.environ)
    full_env.setdefault("QASUP_GPUS", "none")
    full_env.pop("QASUP_SOCKET", None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout, input=input, stdin=None if input else
                          subprocess.DEVNULL)


def make_stack(tmp_path: Path, units: Mapping[str, str], stack_toml: str | None = None,
               files: Mapping[str, str | bytes] | None = None) -> Path:
    """Write a stack under ``tmp_path`` and return its folder (``tmp_path`` itself).

    ``units`` maps a service name to its unit file's TOML text (dedented), written to
    ``services.d/NAME.toml``. ``stack_toml``, when given, is written to ``qasup.toml``. ``files`` maps other
    paths relative to the stack folder (drop-ins such as ``services.d/web.d/10-x.toml``, ``.env`` files) to
    their text or bytes; folders are created as needed.
    """
    root = Path(tmp_path)
    (root / "services.d").mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (root / "services.d" / f"{name}.toml").write_text(textwrap.dedent(text))
    if stack_toml is not None:
        (root / "qasup.toml").write_text(textwrap.dedent(stack_toml))
    for rel, content in (files or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(textwrap.dedent(content))
    return root


# ----------------------------------------------------------------------------------------------- bytecode

BYTECODE_FOR = ("qasup", "sanic")
"""The distributions whose code the suite's subprocesses import (``python -m supervisor``; test_sanic's real Sanic
app), with what they require (extras aside; setuptools, pip and wheel are never imported at run time)."""


def compile_bytecode() -> int:
    """Write the missing or stale bytecode of the ``supervisor`` package and of :data:`BYTECODE_FOR`'s
    distributions; return how many files were looked at. Python caches it itself on import, except where
    PYTHONDONTWRITEBYTECODE is set (containers often set it): there every daemon and CLI run a test starts would
    compile qasup's modules again (~0.3 s of CPU per ``qasup up``, ~0.1 s per ``qasup status`` here), as an
    installed qasup, whose bytecode pip wrote, never does. (bench/run.py does the same for its runs.)"""
    import compileall
    import importlib.metadata as md

    sources = sorted((REPO / "supervisor").rglob("*.py"))
    seen: set[str] = {"setuptools", "pip", "wheel"}
    todo = list(BYTECODE_FOR)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        sources += [Path(str(dist.locate_file(f))) for f in dist.files or () if f.suffix == ".py"]
        todo += [m.group(0) for req in dist.requires or () if "extra ==" not in req
                 and (m := re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req))]
    for source in sources:
        if source.parent.name != "__pycache__" and source.is_file():
            compileall.compile_file(source, quiet=2)   # skips what is up to date; written atomically
    return len(sources)


def pytest_sessionstart(session) -> None:
    if sys.dont_write_bytecode:
        compile_bytecode()
