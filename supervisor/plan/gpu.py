"""GPU inventory: what the plan knows about the machine's GPUs.

Two sources, in this order of precedence:

* a declared inventory, ``--gpus SPEC`` or ``QASUP_GPUS`` (planning for another machine, tests):
  ``none``, inline JSON (a list of objects), or a path to a JSON file holding such a list;
* NVML through the ``nvidia-ml-py`` package (``import pynvml``), read once per call.

No NVML library, no driver, or any NVML error while initialising means "no GPUs", returned with a
human-readable reason, never a traceback. ``pynvml`` is imported lazily so that importing this module
stays cheap for every CLI verb that never looks at GPUs.

Compute capability comes from ``nvmlDeviceGetCudaComputeCapability`` (no lookup table by name, no
pycuda, no nvidia-smi: the causes of QAnything issues #111, #114, #182, #205, #245).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from supervisor.records import dataclass

__all__ = [
    "GpuInfo",
    "GpuSpecError",
    "Inventory",
    "inventory_json",
    "load_inventory",
    "parse_gpus_spec",
    "read_nvml",
]

_MIB = 1024 * 1024
_CAPABILITY_RE = re.compile(r"^([0-9]+)\.([0-9]+)$")
_FIELDS = ("index", "name", "memory_total_mib", "memory_free_mib", "compute_capability")


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the plan sees it. Memory in MiB (like ``nvidia-smi``), capability like ``"8.6"``."""

    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int
    compute_capability: str

    @property
    def capability(self) -> tuple[int, int]:
        """The compute capability as ``(major, minor)``, compared as numbers (``"12.0" > "8.6"``)."""
        m = _CAPABILITY_RE.match(self.compute_capability)
        if m is None:  # only reachable by constructing GpuInfo by hand with a bad string
            raise ValueError(f"bad compute capability {self.compute_capability!r} for GPU {self.index}")
        return int(m.group(1)), int(m.group(2))

    def label(self) -> str:
        """``GPU 0 (NVIDIA GeForce RTX 3090, 24576 MiB)``: how every message names a GPU."""
        return f"GPU {self.index} ({self.name}, {self.memory_total_mib} MiB)"

    def to_json(self) -> dict[str, Any]:
        """The object used by ``plan --json`` and accepted back by ``--gpus``."""
        return {
            "index": self.index,
            "name": self.name,
            "memory_total_mib": self.memory_total_mib,
            "memory_free_mib": self.memory_free_mib,
            "compute_capability": self.compute_capability,
        }


@dataclass(frozen=True)
class Inventory:
    """The GPUs found, where they came from, and (when there are none) why."""

    gpus: tuple[GpuInfo, ...]
    source: str  # "nvml", "--gpus", "QASUP_GPUS", or "none" (the stack uses no GPU: NVML not read)
    reason: str | None  # why no GPUs were found; None when gpus is non-empty or declared "none"


class GpuSpecError(ValueError):
    """A declared inventory (``--gpus`` / ``QASUP_GPUS``) that cannot be used. ``str()`` is the message."""

    def __init__(self, source: str, message: str, field: str | None = None) -> None:
        self.source = source
        self.field = field
        self.message = message
        super().__init__(f"{source}: {message}")


# ---------------------------------------------------------------------------------------------
# NVML


def read_nvml() -> tuple[list[GpuInfo], str | None]:
    """Read every GPU through NVML.

    Returns ``(gpus, reason)``: ``reason`` is None when NVML answered, else one line saying why no
    (or not every) GPU could be read: library missing, driver missing, NVML error. Never raises.
    The binding is unloaded again afterwards: the daemon needs it once, at planning, and it costs about
    4 MiB of resident memory for as long as it stays imported (a reload imports it anew).
    """
    try:
        return _read_nvml()
    finally:
        import sys

        sys.modules.pop("pynvml", None)


def _read_nvml() -> tuple[list[GpuInfo], str | None]:
    try:
        import pynvml  # lazy: the package loads a C library wrapper; most verbs never need it
    except ImportError as exc:
        return [], f"no GPUs: the NVML Python package (nvidia-ml-py) cannot be imported ({exc})"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, OSError from ctypes...
        return [], f"no GPUs: NVML is not available ({_nvml_error_text(exc)})"
    gpus: list[GpuInfo] = []
    problems: list[str] = []
    try:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except Exception as exc:
            return [], f"no GPUs: NVML could not count the GPUs ({_nvml_error_text(exc)})"
        for index in range(count):
            try:
                gpus.append(_read_nvml_device(pynvml, index))
            except Exception as exc:  # a lost or inaccessible GPU must not hide the others
                problems.append(f"GPU {index} could not be read ({_nvml_error_text(exc)})")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    reason = "; ".join(problems) if problems else None
    if not gpus and reason is None:
        reason = "no GPUs: NVML reports 0 devices"
    return gpus, reason


def _read_nvml_device(pynvml: Any, index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    if isinstance(name, bytes):  # older nvidia-ml-py releases return bytes
        name = name.decode("utf-8", "replace")
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return GpuInfo(
        index=index,
        name=str(name),
        memory_total_mib=int(memory.total) // _MIB,
        memory_free_mib=int(memory.free) // _MIB,
        compute_capability=f"{int(major)}.{int(minor)}",
    )


def _nvml_error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Declared inventory


def parse_gpus_spec(spec: str, source: str = "--gpus") -> list[GpuInfo]:
    """Parse a declared inventory: ``none``, inline JSON (starts with ``[``) or a JSON file's path.

    ``source`` names where the spec came from (``--gpus`` or ``QASUP_GPUS``) in error messages.
    Raises GpuSpecError with a message naming the offending GPU entry and field.
    """
    text = spec.strip()
    if not text:
        raise GpuSpecError(source, 'empty; give "none", a JSON list of GPUs or the path of a JSON file')
    if text.lower() == "none":
        return []
    if text[0] in "[{":
        where = "inline JSON"
        raw = text
    else:
        path = Path(text).expanduser()
        where = str(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GpuSpecError(
                source, f'{text!r} is neither "none", inline JSON nor an existing file'
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise GpuSpecError(source, f"cannot read {where}: {exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise GpuSpecError(
            source, f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return _gpus_from_json(data, source, where)


def _gpus_from_json(data: Any, source: str, where: str) -> list[GpuInfo]:
    if not isinstance(data, list):
        raise GpuSpecError(source, f"{where} must be a JSON list of GPU objects, got {_json_type(data)}")
    gpus: list[GpuInfo] = []
    seen: set[int] = set()
    for position, item in enumerate(data):
        gpu = _gpu_from_json(item, source, position)
        if gpu.index in seen:
            raise GpuSpecError(source, f"GPU index {gpu.index} is declared twice", "index")
        seen.add(gpu.index)
        gpus.append(gpu)
    return sorted(gpus, key=lambda g: g.index)


def _gpu_from_json(item: Any, source: str, position: int) -> GpuInfo:
    entry = f"GPU entry #{position}"
    if not isinstance(item, dict):
        raise GpuSpecError(source, f"{entry} must be a JSON object, got {_json_type(item)}")
    unknown = sorted(set(item) - set(_FIELDS))
    if unknown:
        raise GpuSpecError(
            source,
            f"{entry}: unknown field {unknown[0]!r} (known: {', '.join(_FIELDS)})",
            unknown[0],
        )
    for name in ("index", "name", "memory_total_mib", "compute_capability"):
        if name not in item:
            raise GpuSpecError(source, f"{entry}: missing field {name!r}", name)

    index = item["index"]
    if not _is_int(index) or index < 0:
        raise GpuSpecError(source, f"{entry}: \"index\" must be a whole number >= 0, got {index!r}", "index")
    entry = f"GPU {index}"

    name = item["name"]
    if not isinstance(name, str) or not name.strip():
        raise GpuSpecError(source, f'{entry}: "name" must be a non-empty string, got {name!r}', "name")

    total = item["memory_total_mib"]
    if not _is_int(total) or total <= 0:
        raise GpuSpecError(
            source,
            f'{entry}: "memory_total_mib" must be a whole number of MiB > 0, got {total!r}',
            "memory_total_mib",
        )
    free = item.get("memory_free_mib", total)
    if not _is_int(free) or not 0 <= free <= total:
        raise GpuSpecError(
            source,
            f'{entry}: "memory_free_mib" must be a whole number of MiB between 0 and '
            f"memory_total_mib ({total}), got {free!r}",
            "memory_free_mib",
        )

    capability = item["compute_capability"]
    if isinstance(capability, (int, float)) and not isinstance(capability, bool):
        capability = str(float(capability))
    if not isinstance(capability, str) or not _CAPABILITY_RE.match(capability.strip()):
        raise GpuSpecError(
            source,
            f'{entry}: "compute_capability" must be a string like "8.6", got {item["compute_capability"]!r}',
            "compute_capability",
        )
    return GpuInfo(index, name.strip(), total, free, capability.strip())


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    for kind, label in names.items():
        if isinstance(value, kind):
            return label
    return "a number"


# ---------------------------------------------------------------------------------------------
# Resolution


def load_inventory(spec: str | None = None, environ: Mapping[str, str] | None = None, *,
                   nvml: bool = True) -> Inventory:
    """The inventory the plan uses: ``spec`` (``--gpus``), else ``QASUP_GPUS``, else NVML (unless ``nvml`` is
    False: then no GPUs, source ``"none"``).

    An empty ``QASUP_GPUS`` counts as unset. Raises GpuSpecError for a bad declared inventory;
    never raises for NVML trouble (that is "no GPUs" with a reason).
    """
    env = os.environ if environ is None else environ
    if spec is not None:
        return Inventory(tuple(parse_gpus_spec(spec, "--gpus")), "--gpus", None)
    declared = env.get("QASUP_GPUS", "")
    if declared.strip():
        return Inventory(tuple(parse_gpus_spec(declared, "QASUP_GPUS")), "QASUP_GPUS", None)
    if not nvml:
        return Inventory((), "none", "not read: no unit of this stack uses a GPU")
    gpus, reason = read_nvml()
    return Inventory(tuple(gpus), "nvml", reason)


def inventory_json(gpus: Sequence[GpuInfo]) -> list[dict[str, Any]]:
    """The ``gpus`` list of ``plan --json``."""
    return [gpu.to_json() for gpu in gpus]
