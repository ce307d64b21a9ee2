"""QAnything's GPU plan: the rules of ``run_for_local_option.sh`` steps 1-6, as a pure function.

``decide(PlanInputs, gpus) -> PlanOutcome`` validates the run.sh-style flags (:mod:`.qanything_inputs`), picks
GPU ids, the GPU series, the runtime backend (automatic switches included), checks the model size against the
VRAM table (:mod:`.vram`) and computes OFFCUT_TOKEN and OCR_USE_GPU. Nothing here touches the machine: the GPU
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

import re
from collections.abc import Sequence
from typing import Any

from supervisor.config.facts import BACKENDS, LLM_APIS, TENSOR_PARALLEL_SIZES, WHEN_FACTS
from supervisor.plan.gpu import GpuInfo
from supervisor.plan.qanything_inputs import PlanInputError, PlanInputs, format_float, validate
from supervisor.plan.vram import MIN_MEMORY_MIB, VramVerdict, tensor_parallel_check, too_small, vram_table
from supervisor.records import dataclass

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

#: GPUs FasterTransformer (the default backend) supports: RTX 30/40 series and A10/A30/A40/A100/A800.
SERIES_RE = re.compile(r"RTX\s*(30|40)|A(10|30|40|100|800)")

_OCR_GPU_MIN_CAPABILITY = (7, 5)
_VLLM_SWITCH_MIN_CAPABILITY = (8, 6)
_VLLM_SWITCH_MIN_MEMORY_MIB = 24000
_BUSY_GPU_MIN_USED_MIB = 1024


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
            "GPU_MEM_UTILI": format_float(self.gpu_memory_utilization),
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
        """The facts a unit's ``[when]`` table can match on (:data:`~supervisor.config.facts.WHEN_FACTS`: each is
        the attribute of the same name)."""
        return {name: getattr(self, name) for name in WHEN_FACTS}

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


# ---------------------------------------------------------------------------------------------
# The plan


def decide(inputs: PlanInputs, gpus: Sequence[GpuInfo]) -> PlanOutcome:
    """Decide the plan for ``inputs`` on a machine with ``gpus``.

    Raises PlanInputError for invalid inputs (exit 2); an infeasible plan is an outcome with
    ``feasible=False`` and ``error`` set (exit 1), never an exception.
    """
    v = validate(inputs)
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
                f"no GPU found: this project needs a GPU with at least {MIN_MEMORY_MIB} MiB even with "
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
    else:
        tp_gpus = [by_index[i] for i in v.device_ids[: v.tensor_parallel]]
        smallest = min(tp_gpus, key=lambda g: g.memory_total_mib)
        if smallest.memory_total_mib < MIN_MEMORY_MIB:   # the table's first row, for every GPU the model spans
            verdict = VramVerdict(0, too_small(smallest))
        else:
            verdict = tensor_parallel_check(tp_gpus, v.size, v.model_size, v.tensor_parallel,
                                            v.gpu_memory_utilization)
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
