"""Shared test helpers. Import them directly: ``from conftest import qasup, make_stack``.

* :func:`qasup` runs the real command line (``python -m supervisor ...``) as a subprocess, the user's view.
* :func:`make_stack` writes a stack folder (``services.d/NAME.toml`` per unit, optional ``qasup.toml``).

Names here are used by other test files: keep them stable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

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
