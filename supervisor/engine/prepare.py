"""A unit's ``[prepare]`` step: run once before each start, skipped while its ``when_changed`` contents are unchanged.

The hash of those contents is kept in the state folder (``prepare/NAME.hash``, 0600) once the step succeeded;
the step's output goes to the service's log file; qasup's own words about it to qasup's output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from supervisor.proc import contenthash
from supervisor.proc.kernel import SpawnError
from supervisor.proc.run import run_to_completion
from supervisor.proc.spawn import unit_credentials

if TYPE_CHECKING:
    from supervisor.plan.resolve import ResolvedUnit
    from supervisor.proc.reaper import Reaper

__all__ = ["run_prepare"]


async def run_prepare(unit: ResolvedUnit, *, reaper: Reaper, stamp: Path, env: Mapping[str, str],
                      write_log: Callable[[bytes], None], tell: Callable[[str], None]) -> str | None:
    """Run ``unit``'s prepare step (its hash kept in ``stamp``); None when it succeeded or was skipped, else why
    the start fails."""
    spec = unit.spec.prepare
    assert spec is not None and unit.prepare_argv is not None
    digest = None
    if unit.prepare_paths:
        digest = await anyio.to_thread.run_sync(contenthash.hash_paths, list(unit.prepare_paths))
        try:
            if stamp.read_text().strip() == digest:
                tell(f"prepare skipped: {', '.join(map(str, unit.prepare_paths))} unchanged")
                return None
        except OSError:
            pass
    tell(f"prepare: {' '.join(unit.prepare_argv)}")
    try:
        code, out = await run_to_completion(
            reaper, unit.prepare_argv, cwd=unit.cwd, env=env, timeout=spec.timeout, tag=f"{unit.name}.prepare",
            pdeathsig=False, credentials=unit_credentials(unit))
    except SpawnError as e:
        return f"prepare failed: {e}"
    except TimeoutError as e:
        write_log(getattr(e, "output", b""))
        return f"prepare did not finish within {spec.timeout:g}s"
    write_log(out)
    if code != 0:
        last = out.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return f"prepare exited {code}: {last[0][:200]}"
    if digest is not None:
        from supervisor.engine.statedir import make_private_dir, write_private  # 0700 / 0600, whatever the umask
        make_private_dir(stamp.parent)
        write_private(stamp, digest + "\n")
    return None
