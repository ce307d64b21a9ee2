"""QAnything's GPU memory rules: the VRAM table (run.sh step 6, one GPU) and the tensor-parallel check.

Both give a :class:`VramVerdict`: the OFFCUT_TOKEN (how much of the LLM's context is cut to fit), the
refusal (None when the model fits) and advice lines for the plan's messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import field
from decimal import Decimal

from supervisor.plan.gpu import GpuInfo
from supervisor.plan.qanything_inputs import format_float
from supervisor.records import dataclass

__all__ = ["MIN_MEMORY_MIB", "VramVerdict", "tensor_parallel_check", "too_small", "vram_table"]

MIN_MEMORY_MIB = 4000
"""Below this, a GPU cannot serve even the online-API plan (embedding, rerank and OCR need about 4 GB)."""
_LLM_CONTEXT_TOKENS = 4096


@dataclass(frozen=True)
class VramVerdict:
    """One row of the VRAM table applied: the OFFCUT_TOKEN, the refusal (or None) and advice lines."""

    offcut_token: int
    error: str | None
    messages: tuple[str, ...] = field(default=())


def vram_table(gpu: GpuInfo, size: Decimal, model_size: str, backend: str, series: str, same_gpu: bool) -> VramVerdict:
    """Apply the VRAM table to gpu_id1 (``gpu``) for a single-GPU (tensor_parallel 1) plan.

    ``size`` is the model size in billions of parameters, ``model_size`` its text for messages,
    ``backend`` the runtime backend after the automatic switches.

    Reading of the table's ranges: they are inclusive and the first match wins, exactly like the
    script's ``-ge``/``-le`` chain, so a boundary value belongs to the *lower* band:
    10240 MiB -> the 8000-10240 band (1.8B), 16384 -> the 10240-16384 band (3B),
    22528 -> the 16384-22528 band (7B with per-backend rules), 24576 -> the 22528-24576 band.
    "model > 2B" etc. compare the size as an exact decimal (1.8B <= 2B, 2.5B > 2B).
    """
    memory = gpu.memory_total_mib
    label = gpu.label()
    if memory < MIN_MEMORY_MIB:
        return VramVerdict(0, too_small(gpu))
    if size == 0:
        return VramVerdict(0, None, (f"{label}: enough for the online OpenAI API (model size 0B).",))
    if memory < 8000:
        advice = f"{label}: only the online OpenAI API is recommended (-c cloud)."
        return VramVerdict(
            0,
            f"{label} can only use the online OpenAI API (-c cloud, model size 0B); {model_size} requested",
            (advice,),
        )
    if memory <= 10240:
        return _size_limit(gpu, size, model_size, Decimal(2), "1.8B models (or the online API) are recommended")
    if memory <= 16384:
        return _size_limit(gpu, size, model_size, Decimal(3), "models of 3B or less (or the online API) are recommended")
    if memory <= 22528:
        verdict = _size_limit(gpu, size, model_size, Decimal(7), "models of 7B or less are recommended")
        if verdict.error is not None:
            return verdict
        return _by_backend_16g(gpu, size, model_size, backend, series, same_gpu, verdict.messages)
    if memory <= 24576:
        return _size_limit(gpu, size, model_size, Decimal(7), "7B models are recommended")
    return VramVerdict(0, None, (f"{label}: enough memory for a {model_size} model.",))


def too_small(gpu: GpuInfo) -> str:
    return (
        f"{gpu.label()} has less than {MIN_MEMORY_MIB} MiB, too little for this project even with the "
        "online API (embedding, rerank and OCR need about 4 GB): use a GTX 1050 Ti or better"
    )


def _size_limit(gpu: GpuInfo, size: Decimal, model_size: str, limit: Decimal, advice: str) -> VramVerdict:
    messages = (f"{gpu.label()}: {advice}.",)
    if size > limit:
        return VramVerdict(
            0, f"{gpu.label()} can hold at most a {limit}B model; {model_size} requested", messages
        )
    return VramVerdict(0, None, messages)


def _by_backend_16g(
    gpu: GpuInfo,
    size: Decimal,
    model_size: str,
    backend: str,
    series: str,
    same_gpu: bool,
    messages: tuple[str, ...],
) -> VramVerdict:
    """The 16384-22528 MiB band's per-backend rows."""
    if backend == "default":
        if not series:
            # Unreachable through decide(): default + size != 0 + no series switches to hf/vllm first.
            return VramVerdict(
                0,
                f"{gpu.label()} cannot run the default backend's {model_size} model: FasterTransformer "
                "needs an RTX 30/40 or A10/A30/A40/A100/A800 series GPU; use -b hf or -b vllm with -m",
                messages,
            )
        offcut = 1400 if same_gpu else 0
    elif backend == "hf":
        if Decimal(3) < size <= Decimal(7):
            offcut = 2700 if same_gpu else 1800
        else:
            offcut = 0
    elif backend == "vllm":
        if size > 3:
            return VramVerdict(
                0,
                f"{gpu.label()} has too little memory for the vllm backend with a {model_size} model "
                "(at most 3B); use -b hf or a smaller model",
                messages,
            )
        offcut = 0
    else:  # sglang: the table has no row for it; the script went on with OFFCUT_TOKEN=0
        offcut = 0
    return VramVerdict(offcut, None, messages + _offcut_messages(offcut))


def _offcut_messages(offcut: int) -> tuple[str, ...]:
    if offcut == 0:
        return ()
    return (
        f"The LLM's context is limited to {_LLM_CONTEXT_TOKENS - offcut} tokens "
        f"(OFFCUT_TOKEN={offcut}) to keep within GPU memory.",
    )


def tensor_parallel_check(
    gpus: Sequence[GpuInfo], size: Decimal, model_size: str, tp: int, utilization: float
) -> VramVerdict:
    """tensor_parallel > 1: total = memory x tp x utilization must hold size x 2 x 1024 MiB.

    The script used GPU1's memory only; vLLM shards the model evenly, so the smallest GPU counts.
    """
    smallest = min(gpus, key=lambda g: g.memory_total_mib)
    total = math.floor(smallest.memory_total_mib * tp * utilization)
    need = size * 2 * 1024
    ids = ", ".join(str(g.index) for g in gpus)
    line = (
        f"GPUs {ids} (tensor parallel {tp}): {tp} x {smallest.memory_total_mib} MiB "
        f"x {format_float(utilization)} = {total} MiB for the model."
    )
    if total < need:
        return VramVerdict(
            0,
            f"GPUs {ids} (tensor parallel {tp}, smallest {smallest.label()}, gpu_memory_utilization "
            f"{format_float(utilization)}) give {total} MiB, but a {model_size} model needs at least "
            f"{int(need)} MiB (size x 2 x 1024); use a smaller model, more GPUs or a higher -r",
            (line,),
        )
    return VramVerdict(0, None, (line,))
