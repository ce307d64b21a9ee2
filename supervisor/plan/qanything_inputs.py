"""QAnything's plan inputs: the run.sh flags (``PlanInputs``) and their validation (run.sh step 1).

``validate(PlanInputs) -> ValidInputs`` normalises the flags (case, spaces, defaults that depend on other flags)
or raises :class:`PlanInputError`, whose text names the flag (``-i/--device-id: ...``): exit 2.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from supervisor.config.facts import BACKENDS, LLM_APIS, TENSOR_PARALLEL_SIZES
from supervisor.records import dataclass

if TYPE_CHECKING:
    from decimal import Decimal

__all__ = ["PlanInputError", "PlanInputs", "ValidInputs", "format_float", "validate"]

_DEVICE_ID_RE = re.compile(r"^([0-9]+,)*[0-9]+$")
_MODEL_SIZE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?B$")


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


def format_float(value: float) -> str:
    """A float as the script wrote it: ``0.81``, ``1`` (no ``.0``)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class ValidInputs:
    """The inputs once validated: what the rules work on."""

    llm_api: str
    device_ids: tuple[int, ...]
    backend: str
    model_name: str
    model_size: str
    size: Decimal  # billions of parameters
    tensor_parallel: int
    gpu_memory_utilization: float
    conv_template: str


def validate(inputs: PlanInputs) -> ValidInputs:
    """The inputs checked and normalised; raises :class:`PlanInputError` naming the first bad flag."""
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
                                                local=llm_api == "local")
    if llm_api == "local" and backend == "default" and tensor_parallel > 1 and not model_name:
        # master sets tensor parallel to the number of ids, then switches any non-vllm backend to vllm, which
        # loads a model from assets/custom_models: without -m it failed late with a shifted-flags error (#106)
        raise PlanInputError(
            "-m/--model-name",
            f'-i/--device-id "{device_id}" means tensor parallel {tensor_parallel} (-p 0: one per GPU id), which '
            "needs the vllm backend and a model from assets/custom_models: give -m NAME -t TEMPLATE (and -s SIZE), "
            f"or -p 1 to run the LLM on GPU {device_ids[0]} and embedding/rerank on GPU {device_ids[1]}")
    utilization = _validate_utilization(inputs.gpu_memory_utilization)
    return ValidInputs(
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
    from decimal import Decimal  # here: only QAnything's rules need it (vram.py imports it too)

    size = Decimal(raw[:-1])
    if llm_api == "cloud" and size != 0:
        raise PlanInputError(
            "-s/--model-size",
            f'"{raw}" given, but -c cloud runs no local model: leave the size empty or give 0B',
        )
    return raw, size


def _validate_tensor_parallel(value: int | str, device_ids: tuple[int, ...], device_id: str,
                              local: bool = True) -> int:
    """run.sh's rules, without its silent drops: ``-i`` lists 1, 2, 4, 8 or 16 GPU ids (for every backend);
    ``-p 0`` (the default) means one per id for a local LLM, so two ids mean tensor parallel 2 (and the vllm
    backend, see :func:`supervisor.plan.qanything.decide`); ``-p 1`` with two ids is the explicit "LLM on the first
    GPU, embedding/rerank on the second". Every id must be used: ``-p 1`` takes at most two, ``-p N`` (N > 1)
    exactly N. Cloud plans run no LLM: tensor parallel is 1 and at most two ids (embedding/rerank, OCR) are used."""
    option = "-p/--tensor-parallel"
    allowed = "1, 2, 4, 8 or 16 (or 0 for one per GPU id in -i)"
    count = len(device_ids)
    if count not in TENSOR_PARALLEL_SIZES:
        raise PlanInputError(
            "-i/--device-id",
            f'"{device_id}" lists {count} GPU ids; run.sh accepts 1, 2, 4, 8 or 16 (list only the GPUs to use)',
        )
    if isinstance(value, bool):
        raise PlanInputError(option, f"{value!r} must be {allowed}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not text.isdigit():
            raise PlanInputError(option, f'"{text}" must be {allowed}')
        number = int(text)
    if number != 0 and number not in TENSOR_PARALLEL_SIZES:
        raise PlanInputError(option, f'"{value}" must be {allowed}')
    if not local:
        if count > 2:
            raise PlanInputError(
                "-i/--device-id",
                f'"{device_id}" lists {count} GPU ids, but a cloud plan uses two at most (embedding and rerank on '
                "the second, or the first when there is one): list only the GPUs to use")
        return 1
    if number == 0:
        number = count
    if number > count:
        raise PlanInputError(option, f'{number} needs {number} GPU ids in -i/--device-id, "{device_id}" lists {count}')
    if number == 1 and count > 2:
        raise PlanInputError(
            option, f'1 uses two GPU ids at most (the LLM on the first, embedding/rerank on the second), but '
                    f'-i/--device-id "{device_id}" lists {count}: the others would be left unused')
    if 1 < number < count:
        raise PlanInputError(
            option, f'{number} spreads the LLM over {number} GPUs, but -i/--device-id "{device_id}" lists {count}: '
                    f"give -p {count} or list only {number} ids")
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
