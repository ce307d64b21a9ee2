"""What every service's host shares (:class:`HostContext`), and the environment of a unit's processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.engine.gate import SpawnGate
from supervisor.records import dataclass

if TYPE_CHECKING:
    from supervisor.engine.service import Service
    from supervisor.errors import Problems
    from supervisor.logs.echo import Echo
    from supervisor.plan.resolve import ResolvedUnit
    from supervisor.proc.reaper import Reaper

__all__ = ["HostContext", "environment_with"]


@dataclass(frozen=True)
class HostContext:
    """What every service's host shares: the reaper, the echo, where to say things, the state folder, the
    daemon's id (put in every process's environment for the guardian), and how to resolve a unit again."""

    reaper: Reaper
    echo: Echo | None
    say: Callable[[str], None]
    state_dir: Path
    environment: Callable[[ResolvedUnit], dict[str, str]]
    resolve: Callable[[Service, Problems], ResolvedUnit | None]
    daemon_id: str = "qasup"   # names the services' NOTIFY_SOCKETs
    gate: SpawnGate = field(default_factory=SpawnGate)   # runs between launch and spawn at once


def environment_with(daemon_variable: str, daemon_id: str) -> Callable[[ResolvedUnit], dict[str, str]]:
    """The environment of a unit's processes: its own plus this daemon's id (found by the guardian)."""
    def env_of(unit: ResolvedUnit) -> dict[str, str]:
        return {**unit.env, daemon_variable: daemon_id}
    return env_of
