"""An in-memory stand-in for the engine behind the control API (the ``Controller`` protocol of
supervisor.control.controller).

test_api.py drives ``serve()`` over a real Unix socket with it; test_ctl.py drives the CLI's verbs against it.
Each builds one with its own services and adjusts the attributes below; the real engine behind the same
socket is tested end to end in test_control_e2e.py. Like the engine it refuses with the domain errors of
supervisor.engine.errors and builds its status with supervisor.protocol's owners of that shape.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from supervisor.engine.errors import Conflict, Rejected
from supervisor.protocol import service_status, stack_status

_ROW_FIELDS = frozenset(service_status(name="", state="")) - {"name"}  # a row's fields; other keys are extras


class FakeController:
    """Services with settable states; actions recorded in ``calls``; events published on demand."""

    def __init__(self, log_dir: Path, services: dict[str, dict[str, Any]]) -> None:
        self.log_dir = log_dir
        self.services = services
        self.stack_state = "ready"
        self.stack_pid = 1
        self.stack_uptime = 3730.0
        self.stack_time = 1_800_000_000.0   # the daemon's clock in the status (fixed: answers compare equal)
        self.stack_name = "qasup"
        self.calls: list[tuple] = []
        self.subscribers: list[Any] = []
        self.reload_error: str | None = None
        self.reload_result: dict[str, Any] = {"changed": ["sanic"], "added": [], "removed": []}
        self.start_errors: dict[str, str] = {}   # service -> the Conflict (409) its start raises
        self.shutdowns = 0
        self.on_shutdown = lambda: None

    def status(self, names=()) -> dict:
        chosen = names or list(self.services)
        return {"stack": stack_status(state=self.stack_state, pid=self.stack_pid, uptime_s=self.stack_uptime,
                                      name=self.stack_name, now=self.stack_time),
                "services": [self._row(n) for n in chosen]}

    def _row(self, name: str) -> dict[str, Any]:
        """The service's status row, plus any extra keys a test gave it (``env``: to see masking)."""
        fields = self.services[name]
        row: dict[str, Any] = dict(service_status(name=name, **{k: v for k, v in fields.items() if k in _ROW_FIELDS}))
        row.update((k, v) for k, v in fields.items() if k not in _ROW_FIELDS)
        return row

    def has_service(self, name: str) -> bool:
        return name in self.services

    async def start(self, name: str) -> dict:
        self.calls.append(("start", name))
        if name in self.start_errors:
            raise Conflict(self.start_errors[name])
        if self.services[name]["state"] == "disabled":
            raise Conflict(f"{name} is disabled by the plan")
        self.services[name]["state"] = "ready"
        return {"name": name, "state": "ready"}

    async def stop(self, name: str) -> dict:
        self.calls.append(("stop", name))
        self.services[name]["state"] = "stopped"
        return {"name": name, "state": "stopped"}

    async def restart(self, name: str, with_dependents: bool = False) -> dict:
        self.calls.append(("restart", name, with_dependents))
        return {"name": name, "state": "ready", "restarted": [name]}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @asynccontextmanager
    async def subscribe_events(self):
        send, receive = anyio.create_memory_object_stream[dict](100)
        self.subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self.subscribers.remove(send)

    def publish(self, event: dict) -> None:
        for send in list(self.subscribers):
            send.send_nowait(event)

    def end_events(self) -> None:
        for send in list(self.subscribers):
            send.close()

    async def reload(self) -> dict:
        self.calls.append(("reload",))
        if self.reload_error:
            raise Rejected(self.reload_error)
        return self.reload_result

    async def shutdown(self) -> None:
        self.calls.append(("shutdown",))
        self.shutdowns += 1
        self.on_shutdown()
