"""QAnything's GPU plan: the rules of ``run_for_local_option.sh`` steps 1-6, as a pure function.

``decide(PlanInputs, gpus) -> PlanOutcome`` validates the run.sh-style flags, picks GPU ids, the
GPU series, the runtime backend (automatic switches included), checks the model size against the
VRAM table and computes OFFCUT_TOKEN and OCR_USE_GPU. Nothing here touches the machine: the GPU
inventory comes in as data (see ``supervisor.plan.gpu``), so every rule is testable without a GPU.

Differences from the script, on purpose (its known bugs):

* model sizes are compared as exact decimals, so ``1.8B`` works (bash ``-gt`` broke on it);
* with tensor parallelism the smallest of the GPUs used counts, not only GPU1 (issue #107);
* the "< 4000 MiB" floor applies with tensor parallelism too (the script skipped it there);
* OCR_USE_GPU looks at gpu_id2's compute capability, the GPU OCR actually runs on;
* a local plan whose backend needs a model folder but has no ``-m`` is refused up front (#106);
* GPUs that are partly used by another process are reported (users saw opaque time-outs, #135);
* every message is English and names the GPU (index, name, memory) and the limit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from supervisor.plan.gpu import GpuInfo

__all__ = [
    "BACKENDS",
    "LLM_APIS",
    "PlanInputError",
    "PlanInputs",
    "PlanOutcome",
    "SERIES_RE",
    "TENSOR_PARALLEL_SIZES",
    "VramVerdict",
    "decide",
    "vram_table",
]

LLM_APIS = ("local", "cloud")
BACKENDS = ("default", "hf", "vllm", "sglang")
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16)
#: GPUs FasterTransformer (the default backend) supports: RTX 30/40 series and A10/A30/A40/A100/A800.
SERIES_RE = re.compile(r"RTX\s*(30|40)|A(10|30|40|100|800)")

_DEVICE_ID_RE = re.compile(r"^([0-9]+,)*[0-9]+$")
_MODEL_SIZE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?B$")
_OCR_GPU_MIN_CAPABILITY = (7, 5)
_VLLM_SWITCH_MIN_CAPABILITY = (8, 6)
_VLLM_SWITCH_MIN_MEMORY_MIB = 24000
_MIN_MEMORY_MIB = 4000
_BUSY_GPU_MIN_USED_MIB = 1024
_LLM_CONTEXT_TOKENS = 4096


class PlanInputError(ValueError):
    """An invalid plan input. ``option`` is the flag (``-i/--device-id``); ``str()`` names it."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        self.message = message
        super().__init__(f"{option}: {message}")


@dataclass(frozen=True)
class PlanInputs:
    """The run.sh flags, with the defaults of the ``[plan]`` table of qasup.toml.

    ``tensor_parallel`` and ``gpu_memory_utilization`` also accept the flag's string.
    """

    llm_api: str = "local"
    device_id: str = "0"
    runtime_backend: str = "default"
    model_name: str = ""
    model_size: str = ""
    conv_template: str = ""
    tensor_parallel: int | str = 0
    gpu_memory_utilization: float | str = 0.81


@dataclass(frozen=True)
class PlanOutcome:
    """What the plan decided. ``feasible`` False means ``error`` says why (exit 1, nothing starts)."""

    feasible: bool
    error: str | None
    messages: tuple[str, ...]
    llm_api: str
    requested_backend: str
    runtime_backend: str
    model_name: str
    model_size: str
    gpu_id1: int | None
    gpu_id2: int | None
    device_ids: tuple[int, ...]
    tensor_parallel: int
    offcut_token: int
    ocr_use_gpu: bool
    conv_template: str
    gpu_memory_utilization: float
    series: str

    @property
    def same_gpu(self) -> bool:
        """gpu_id1 == gpu_id2 (True with no GPU: one card's worth of nothing)."""
        return self.gpu_id1 == self.gpu_id2

    def env(self) -> dict[str, str]:
        """What the plan writes to the stack's .env, under the script's names."""
        return {
            "LLM_API": self.llm_api,
            "DEVICE_ID": ",".join(str(i) for i in self.device_ids),
            "RUNTIME_BACKEND": self.runtime_backend,
            "MODEL_NAME": self.model_name,
            "MODEL_SIZE": self.model_size,
            "CONV_TEMPLATE": self.conv_template,
            "TP": str(self.tensor_parallel),
            "GPU_MEM_UTILI": _format_float(self.gpu_memory_utilization),
            "GPUID1": "" if self.gpu_id1 is None else str(self.gpu_id1),
            "GPUID2": "" if self.gpu_id2 is None else str(self.gpu_id2),
            "OFFCUT_TOKEN": str(self.offcut_token),
            "OCR_USE_GPU": "True" if self.ocr_use_gpu else "False",
            **self.service_ports(),
        }

    def service_ports(self) -> dict[str, str]:
        """Where QAnything's code finds the services this plan starts, as the script wrote them to .env:
        the embed/rerank Triton's gRPC port (10001 when one Triton serves everything, else 9001) and, for
        the FastChat backends, the OpenAI-compatible server's port, model and template."""
        one_triton = self.llm_api == "local" and self.runtime_backend == "default" and self.same_gpu
        port = "10001" if one_triton else "9001"
        out = {"RERANK_PORT": port, "EMBED_PORT": port}
        if self.llm_api == "local" and self.runtime_backend in ("hf", "vllm", "sglang"):
            out.update(LLM_API_SERVE_PORT="7802", LLM_API_SERVE_MODEL=self.model_name,
                       LLM_API_SERVE_CONV_TEMPLATE=self.conv_template)
        return out

    def when_facts(self) -> dict[str, Any]:
        """The facts a unit's ``[when]`` table can match on."""
        return {
            "llm_api": self.llm_api,
            "runtime_backend": self.runtime_backend,
            "requested_backend": self.requested_backend,
            "model_size": self.model_size,
            "same_gpu": self.same_gpu,
            "ocr_use_gpu": self.ocr_use_gpu,
            "tensor_parallel": self.tensor_parallel,
        }

    def to_json(self) -> dict[str, Any]:
        """The plan's part of ``plan --json`` (the caller adds ``gpus`` and ``services``)."""
        return {
            "feasible": self.feasible,
            "error": self.error,
            "messages": list(self.messages),
            "llm_api": self.llm_api,
            "requested_backend": self.requested_backend,
            "runtime_backend": self.runtime_backend,
            "model_name": self.model_name,
            "model_size": self.model_size,
            "gpu_id1": self.gpu_id1,
            "gpu_id2": self.gpu_id2,
            "device_ids": list(self.device_ids),
            "tensor_parallel": self.tensor_parallel,
            "offcut_token": self.offcut_token,
            "ocr_use_gpu": self.ocr_use_gpu,
            "conv_template": self.conv_template,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "series": self.series,
            "env": self.env(),
        }


def _format_float(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


# ---------------------------------------------------------------------------------------------
# Input validation (run.sh step 1)


@dataclass(frozen=True)
class _Valid:
    llm_api: str
    device_ids: tuple[int, ...]
    backend: str
    model_name: str
    model_size: str
    size: Decimal  # billions of parameters
    tensor_parallel: int
    gpu_memory_utilization: float
    conv_template: str


def _validate(inputs: PlanInputs) -> _Valid:
    llm_api = str(inputs.llm_api).strip().lower()
    if llm_api not in LLM_APIS:
        raise PlanInputError("-c/--llm-api", f"{inputs.llm_api!r} must be local or cloud")

    device_id = str(inputs.device_id).strip()
    if not _DEVICE_ID_RE.match(device_id):
        raise PlanInputError("-i/--device-id", f'"{device_id}" is not a list of GPU ids like 0 or 0,1')
    device_ids = tuple(int(part) for part in device_id.split(","))
    if len(set(device_ids)) != len(device_ids):
        twice = next(i for i in device_ids if device_ids.count(i) > 1)
        raise PlanInputError("-i/--device-id", f'"{device_id}" lists GPU {twice} twice')

    backend = str(inputs.runtime_backend).strip().lower()
    if backend not in BACKENDS:
        raise PlanInputError(
            "-b/--runtime-backend", f'"{inputs.runtime_backend}" must be default, hf, vllm or sglang'
        )

    model_name = str(inputs.model_name).strip()
    conv_template = str(inputs.conv_template).strip()
    _check_flag_value("-m/--model-name", model_name)
    _check_flag_value("-t/--conv-template", conv_template)
    if model_name in (".", "..") or "/" in model_name or "\0" in model_name:
        raise PlanInputError(
            "-m/--model-name",
            f'"{model_name}" must be the name of a folder under assets/custom_models '
            "(/model_repos/CustomLLM), not a path",
        )
    if llm_api == "local" and backend != "default" and not model_name:
        raise PlanInputError(
            "-m/--model-name",
            f"the {backend} backend loads a model from assets/custom_models: give its folder name "
            "with -m (and its conversation template with -t), e.g. -m MiniChat-2-3B -t minichat",
        )

    model_size, size = _validate_model_size(str(inputs.model_size), llm_api, backend)
    tensor_parallel = _validate_tensor_parallel(inputs.tensor_parallel, device_ids, device_id,
                                                one_per_id=llm_api == "local" and backend != "default")
    utilization = _validate_utilization(inputs.gpu_memory_utilization)
    return _Valid(
        llm_api, device_ids, backend, model_name, model_size, size, tensor_parallel, utilization, conv_template
    )


def _check_flag_value(option: str, value: str) -> None:
    # The script's #106: an empty, unquoted -m made getopts take "-t" as the model name.
    if value.startswith("-"):
        raise PlanInputError(option, f'"{value}" looks like a flag: the value of {option.split("/")[0]} is missing')


def _validate_model_size(text: str, llm_api: str, backend: str) -> tuple[str, Decimal]:
    raw = text.strip()
    if raw.endswith("b"):
        raw = raw[:-1] + "B"
    if not raw:
        if llm_api == "cloud":
            raw = "0B"
        elif backend == "default":
            raw = "7B"  # the default backend serves the bundled Qwen-7B-QAnything
        else:
            raise PlanInputError(
                "-s/--model-size",
                f"required with the {backend} backend: give the model's size in billions of "
                "parameters, like 1.8B, 3B or 7B (0B skips the GPU memory check)",
            )
    if not _MODEL_SIZE_RE.match(raw):
        raise PlanInputError("-s/--model-size", f'"{text.strip()}" is not a model size like 1.8B, 3B or 7B')
    size = Decimal(raw[:-1])
    if llm_api == "cloud" and size != 0:
        raise PlanInputError(
            "-s/--model-size",
            f'"{raw}" given, but -c cloud runs no local model: leave the size empty or give 0B',
        )
    return raw, size


def _validate_tensor_parallel(value: int | str, device_ids: tuple[int, ...], device_id: str,
                              one_per_id: bool = True) -> int:
    """``0`` means one per GPU id for the FastChat backends (hf, vllm, sglang), whose worker spans the ids of
    ``-i``; for the default backend and cloud plans it means 1, since there the second id of ``-i 0,1`` is the
    embed/rerank Triton's GPU, as in run.sh (which used the two ids that way with tensor parallel 1)."""
    option = "-p/--tensor-parallel"
    allowed = "1, 2, 4, 8 or 16 (or 0 for one per GPU id in -i)"
    if isinstance(value, bool):
        raise PlanInputError(option, f"{value!r} must be {allowed}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not text.isdigit():
            raise PlanInputError(option, f'"{text}" must be {allowed}')
        number = int(text)
    if number == 0 and not one_per_id:
        return 1
    if number == 0:
        number = len(device_ids)
        if number not in TENSOR_PARALLEL_SIZES:
            raise PlanInputError(
                option,
                f'0 means one per GPU id, but -i/--device-id "{device_id}" lists {number}; '
                "give -p 1, 2, 4, 8 or 16",
            )
    if number not in TENSOR_PARALLEL_SIZES:
        raise PlanInputError(option, f'"{value}" must be {allowed}')
    if number > len(device_ids):
        raise PlanInputError(
            option,
            f'{number} needs {number} GPU ids in -i/--device-id, "{device_id}" lists {len(device_ids)}',
        )
    return number


def _validate_utilization(value: float | str) -> float:
    option = "-r/--gpu-memory-utilization"
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise PlanInputError(option, f'"{value}" must be a number in (0, 1], like 0.81') from None
    if not math.isfinite(number) or not 0 < number <= 1:
        raise PlanInputError(option, f'"{value}" must be a number in (0, 1], like 0.81')
    return number


# ---------------------------------------------------------------------------------------------
# The VRAM table (script step 6, tensor_parallel == 1)


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
    if memory < _MIN_MEMORY_MIB:
        return VramVerdict(0, _too_small(gpu))
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


def _too_small(gpu: GpuInfo) -> str:
    return (
        f"{gpu.label()} has less than {_MIN_MEMORY_MIB} MiB, too little for this project even with the "
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


def _tensor_parallel_check(
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
        f"x {_format_float(utilization)} = {total} MiB for the model."
    )
    if total < need:
        return VramVerdict(
            0,
            f"GPUs {ids} (tensor parallel {tp}, smallest {smallest.label()}, gpu_memory_utilization "
            f"{_format_float(utilization)}) give {total} MiB, but a {model_size} model needs at least "
            f"{int(need)} MiB (size x 2 x 1024); use a smaller model, more GPUs or a higher -r",
            (line,),
        )
    return VramVerdict(0, None, (line,))


# ---------------------------------------------------------------------------------------------
# The plan


def decide(inputs: PlanInputs, gpus: Sequence[GpuInfo]) -> PlanOutcome:
    """Decide the plan for ``inputs`` on a machine with ``gpus``.

    Raises PlanInputError for invalid inputs (exit 2); an infeasible plan is an outcome with
    ``feasible=False`` and ``error`` set (exit 1), never an exception.
    """
    v = _validate(inputs)
    messages: list[str] = []
    gpu_id1 = v.device_ids[0]
    gpu_id2 = v.device_ids[1] if len(v.device_ids) > 1 else gpu_id1

    def outcome(
        error: str | None,
        *,
        backend: str = v.backend,
        ids: tuple[int | None, int | None] = (gpu_id1, gpu_id2),
        offcut: int = 0,
        ocr: bool = False,
        series: str = "",
    ) -> PlanOutcome:
        return PlanOutcome(
            feasible=error is None,
            error=error,
            messages=tuple(messages),
            llm_api=v.llm_api,
            requested_backend=v.backend,
            runtime_backend=backend,
            model_name=v.model_name,
            model_size=v.model_size,
            gpu_id1=ids[0],
            gpu_id2=ids[1],
            device_ids=v.device_ids,
            tensor_parallel=v.tensor_parallel,
            offcut_token=offcut,
            ocr_use_gpu=ocr,
            conv_template=v.conv_template,
            gpu_memory_utilization=v.gpu_memory_utilization,
            series=series,
        )

    if not gpus:
        if v.size > 0:
            error = (
                f"no GPU found, but a local {v.model_size} model needs one; use -c cloud for the "
                "online OpenAI API (which still needs a GPU with 4000 MiB for embedding, rerank and OCR)"
            )
        else:
            error = (
                f"no GPU found: this project needs a GPU with at least {_MIN_MEMORY_MIB} MiB even with "
                "the online OpenAI API (embedding, rerank and OCR run locally)"
            )
        return outcome(error, ids=(None, None))

    by_index = {g.index: g for g in gpus}
    missing = [i for i in v.device_ids if i not in by_index]
    if missing:
        have = ", ".join(f"{g.index} ({g.name})" for g in sorted(gpus, key=lambda g: g.index))
        return outcome(
            f"-i/--device-id: GPU {missing[0]} does not exist; this machine has GPU {have}"
        )

    gpu1, gpu2 = by_index[gpu_id1], by_index[gpu_id2]
    match = SERIES_RE.search(gpu1.name)
    series = match.group(0) if match else ""
    # The script tested gpu_id1's capability, but OCR runs on gpu_id2 (CUDA_VISIBLE_DEVICES=gpu_id2).
    ocr = gpu2.capability >= _OCR_GPU_MIN_CAPABILITY
    messages.append(
        f"GPU1 is {gpu1.label()}, compute capability {gpu1.compute_capability}, "
        f"series {series or 'not RTX 30/40 or A10/A30/A40/A100/A800'}."
    )
    if gpu_id2 != gpu_id1:
        messages.append(f"GPU2 (embedding, rerank, OCR) is {gpu2.label()}.")
    messages.append(
        f"OCR runs on the {'GPU' if ocr else 'CPU'}: GPU {gpu2.index} has compute capability "
        f"{gpu2.compute_capability} ({'>=' if ocr else '<'} 7.5)."
    )

    backend = v.backend
    if backend == "default" and v.size != 0 and not series:
        if (
            gpu1.memory_total_mib >= _VLLM_SWITCH_MIN_MEMORY_MIB
            and gpu1.capability >= _VLLM_SWITCH_MIN_CAPABILITY
        ):
            backend = "vllm"
            why = f">= {_VLLM_SWITCH_MIN_MEMORY_MIB} MiB and compute capability >= 8.6"
        else:
            backend = "hf"
            why = f"not both >= {_VLLM_SWITCH_MIN_MEMORY_MIB} MiB and compute capability >= 8.6"
        messages.append(
            f"The default backend (FasterTransformer) needs an RTX 30/40 or A10/A30/A40/A100/A800 GPU; "
            f"{gpu1.label()} is not one, so the backend is switched to {backend} ({why})."
        )
    if v.llm_api == "local" and v.tensor_parallel != 1 and backend != "vllm":
        messages.append(
            f"Tensor parallel {v.tensor_parallel} needs the vllm backend: switched from {backend} to vllm."
        )
        backend = "vllm"
    if v.llm_api == "local" and backend != "default" and not v.model_name:
        return outcome(
            f"-m/--model-name: the plan switched to the {backend} backend, which loads a model from "
            "assets/custom_models: give its folder name with -m and its template with -t"
            + (" (or -p 1 to keep the default backend)" if v.backend == "default" and series else ""),
            backend=backend,
            ocr=ocr,
            series=series,
        )

    _note_busy_gpus([by_index[i] for i in v.device_ids], messages)

    if v.llm_api == "local" and v.size == 0:
        messages.append("Model size 0B: the GPU memory check for the local model is skipped.")
    if v.tensor_parallel == 1 or v.size == 0:
        # 0B (cloud, or the script's "skip the check" escape) needs only the table's first rows.
        verdict = vram_table(gpu1, v.size, v.model_size, backend, series, gpu_id1 == gpu_id2)
    elif gpu1.memory_total_mib < _MIN_MEMORY_MIB:
        verdict = VramVerdict(0, _too_small(gpu1))
    else:
        tp_gpus = [by_index[i] for i in v.device_ids[: v.tensor_parallel]]
        verdict = _tensor_parallel_check(tp_gpus, v.size, v.model_size, v.tensor_parallel, v.gpu_memory_utilization)
    messages.extend(verdict.messages)
    return outcome(
        verdict.error,
        backend=backend,
        offcut=verdict.offcut_token if verdict.error is None else 0,
        ocr=ocr,
        series=series,
    )


def _note_busy_gpus(used: Sequence[GpuInfo], messages: list[str]) -> None:
    """Warn about GPUs another process already holds memory on (the script only saw totals)."""
    for gpu in used:
        taken = gpu.memory_total_mib - gpu.memory_free_mib
        if taken >= _BUSY_GPU_MIN_USED_MIB:
            messages.append(
                f"Warning: {gpu.label()} has only {gpu.memory_free_mib} MiB free; another process "
                f"holds {taken} MiB, services on it may run out of memory."
            )
