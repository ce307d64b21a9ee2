"""The stack file, ``qasup.toml``: its ``[stack]`` table (folders, echo, stop budget, banner, drop-in folders)
and its ``[plan]`` table (the run.sh flags' defaults), read into a :class:`~supervisor.config.spec.StackSpec`.

Defaults are :class:`~supervisor.config.spec.StackSpec`'s own; the ``[plan]`` values are only type-checked
here (their meaning is QAnything's plan's, :mod:`supervisor.plan.qanything`).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Any

from supervisor.config.files import read_toml
from supervisor.config.reader import MISSING, Reader
from supervisor.config.spec import StackSpec
from supervisor.errors import Problems
from supervisor.protocol import DEFAULT_SOCKET_NAME, SOCKET_ENV, parse_hostport

__all__ = ["PLAN_KEYS", "SOCKET_PATH_MAX", "STACK_KEYS", "check_socket_path", "default_socket", "load_stack"]

SOCKET_PATH_MAX = 107
"""The longest path (in bytes) a Unix socket can be bound to (``sun_path`` holds 108, a NUL included)."""

STACK_KEYS = {"name", "services", "log_dir", "state_dir", "env_file", "echo", "stop_budget", "banner", "dropins",
              "http"}

PLAN_KEYS: dict[str, type | tuple[type, ...]] = {
    "llm_api": str, "device_id": str, "runtime_backend": str, "model_name": str, "model_size": str,
    "conv_template": str, "tensor_parallel": int, "gpu_memory_utilization": (float, int), "gpus": (str, list),
}
"""The ``[plan]`` table's keys and their TOML types: the fields of the plan's inputs, and ``gpus``."""

_PLAN_WHAT = {
    "tensor_parallel": "an integer", "gpu_memory_utilization": "a number between 0 and 1",
    "gpus": "an inventory (\"none\", a JSON file's path, or an array of tables)",
}
for _k in PLAN_KEYS:
    _PLAN_WHAT.setdefault(_k, "a string")

_PATHS = ("services", "log_dir", "state_dir", "env_file")


def load_stack(root: Path, file: Path | None, probs: Problems) -> StackSpec:
    """The stack at ``root``, from ``file`` (None: no stack file, every default)."""
    if file is None:
        return StackSpec(root=root)
    data = read_toml(file, probs)
    if data is None:
        return StackSpec(root=root, file=file)
    top = Reader(probs, file, data, "", {"stack", "plan"})
    st = top.sub("stack", STACK_KEYS)
    kw: dict[str, Any] = {}
    if st is not None:
        kw["name"] = st.string("name", StackSpec.name)
        for k in _PATHS:
            v = st.string(k)
            if v is not None:
                if not v:
                    st.err(k, "must not be empty")
                else:
                    kw[k] = Path(v)
        kw["echo"] = st.boolean("echo", StackSpec.echo)
        kw["stop_budget"] = st.duration("stop_budget", StackSpec.stop_budget)
        kw["banner"] = st.string("banner", StackSpec.banner)
        kw["dropins"] = tuple(Path(p) for p in (st.str_list("dropins") or ()))
        http = st.string("http")
        if http is not None:
            try:
                kw["http"] = parse_hostport(http)
            except ValueError:
                st.err("http", f"{http!r} is not HOST:PORT (the read-only status page and /metrics listener, "
                               "e.g. \"0.0.0.0:9100\"; a port from 1 to 65535)")
    plan: dict[str, object] = {}
    pt = top.sub("plan", set(PLAN_KEYS))
    if pt is not None:
        for k, kind in PLAN_KEYS.items():
            v = pt.typed(k, kind, _PLAN_WHAT[k], MISSING)
            if v is not MISSING:
                plan[k] = v
    return StackSpec(root=root, file=file, plan=MappingProxyType(plan), has_plan_table=pt is not None, **kw)


def default_socket(stack: StackSpec) -> Path:
    """The control socket when none is given: ``<state_dir>/qasup.sock``, absolute from the stack folder."""
    return stack.path(stack.state_dir) / DEFAULT_SOCKET_NAME


def check_socket_path(stack: StackSpec, probs: Problems) -> None:
    """Report, on ``stack.state_dir``, a default control socket path too long for a Unix socket.

    Only the default socket is a configuration value: a socket given with ``--socket`` or ``$QASUP_SOCKET``
    is the caller's to leave out of this check (it is checked when ``qasup up`` binds it)."""
    sock = default_socket(stack)
    n = len(os.fsencode(sock))
    if n > SOCKET_PATH_MAX:
        probs.add(stack.file or stack.root, "stack.state_dir",
                  f"the control socket {sock} would be {n} bytes long, more than the {SOCKET_PATH_MAX} a Unix "
                  f"socket path can hold: set [stack] state_dir to a shorter folder (an absolute path such as "
                  f"/run/qasup), or give `qasup up --socket PATH` or ${SOCKET_ENV} a shorter path")
