"""The QAnything plan rules (supervisor.plan.qanything): validation, backend switches, the VRAM table."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from supervisor.plan.gpu import GpuInfo
from supervisor.plan.qanything import PlanInputError, PlanInputs, PlanOutcome, decide, vram_table

RTX3090 = "NVIDIA GeForce RTX 3090"


def gpu(index: int = 0, total: int = 24576, name: str = RTX3090, cc: str = "8.6", free: int | None = None) -> GpuInfo:
    return GpuInfo(index, name, total, total if free is None else free, cc)


def plan(gpus: list[GpuInfo], **flags: object) -> PlanOutcome:
    return decide(PlanInputs(**flags), gpus)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# The VRAM table (tensor_parallel 1), every row at both edges.
# Columns: GPU1 memory (MiB), flags, same GPU?, expected feasible, OFFCUT_TOKEN, error substring.

HF = {"runtime_backend": "hf", "model_name": "M"}
VLLM = {"runtime_backend": "vllm", "model_name": "M"}
SGLANG = {"runtime_backend": "sglang", "model_name": "M"}
DEFAULT = {"runtime_backend": "default"}
CLOUD = {"llm_api": "cloud"}

VRAM_ROWS = [
    # < 4000: refused whatever the model, cloud included
    (3999, CLOUD, True, False, 0, "has less than 4000 MiB"),
    (3999, {**HF, "model_size": "0B"}, True, False, 0, "has less than 4000 MiB"),
    # model size 0B: OK on any GPU from 4000 MiB on
    (4000, CLOUD, True, True, 0, None),
    (4000, {**HF, "model_size": "0B"}, True, True, 0, None),
    (30000, CLOUD, False, True, 0, None),
    # < 8000: online API only
    (4000, {**HF, "model_size": "1.8B"}, True, False, 0, "can only use the online OpenAI API"),
    (7999, {**HF, "model_size": "1.8B"}, True, False, 0, "can only use the online OpenAI API"),
    (7999, DEFAULT, True, False, 0, "can only use the online OpenAI API"),
    # 8000-10240: at most 2B (1.8B recommended); fractional sizes compare as numbers
    (8000, {**HF, "model_size": "1.8B"}, True, True, 0, None),
    (8000, {**HF, "model_size": "2B"}, True, True, 0, None),
    (8000, {**HF, "model_size": "2.5B"}, True, False, 0, "can hold at most a 2B model; 2.5B requested"),
    (10240, {**HF, "model_size": "3B"}, True, False, 0, "can hold at most a 2B model; 3B requested"),
    # 10241-16384: at most 3B
    (10241, {**HF, "model_size": "3B"}, True, True, 0, None),
    (10241, {**HF, "model_size": "7B"}, True, False, 0, "can hold at most a 3B model; 7B requested"),
    (16384, {**VLLM, "model_size": "3B"}, True, True, 0, None),
    (16384, {**HF, "model_size": "7B"}, True, False, 0, "can hold at most a 3B model; 7B requested"),
    # 16385-22528: at most 7B, then per backend
    (16385, {**HF, "model_size": "14B"}, True, False, 0, "can hold at most a 7B model; 14B requested"),
    (22528, {**DEFAULT, "model_size": "14B"}, True, False, 0, "can hold at most a 7B model; 14B requested"),
    (16385, DEFAULT, True, True, 1400, None),  # default, series known, same GPU
    (22528, DEFAULT, True, True, 1400, None),
    (16385, {**DEFAULT, "tensor_parallel": 1}, False, True, 0, None),  # default, series known, two GPUs
    (16385, {**HF, "model_size": "7B"}, True, True, 2700, None),  # hf, 3B < size <= 7B, same GPU
    (22528, {**HF, "model_size": "3.5B"}, True, True, 2700, None),
    (16385, {**HF, "model_size": "7B", "tensor_parallel": 1}, False, True, 1800, None),  # two GPUs
    (16385, {**HF, "model_size": "3B"}, True, True, 0, None),  # hf, other sizes
    (16385, {**HF, "model_size": "1.8B"}, False, True, 0, None),
    (16385, {**VLLM, "model_size": "7B"}, True, False, 0, "too little memory for the vllm backend with a 7B model"),
    (22528, {**VLLM, "model_size": "3.5B"}, True, False, 0, "too little memory for the vllm backend"),
    (16385, {**VLLM, "model_size": "3B"}, True, True, 0, None),
    (16385, {**SGLANG, "model_size": "7B"}, True, True, 0, None),  # no row for sglang: OK, 0
    # 22529-24576: at most 7B, OFFCUT 0
    (22529, {**HF, "model_size": "7B"}, True, True, 0, None),
    (22529, DEFAULT, True, True, 0, None),
    (22529, {**VLLM, "model_size": "7B"}, True, True, 0, None),
    (24576, {**HF, "model_size": "14B"}, True, False, 0, "can hold at most a 7B model; 14B requested"),
    (24576, {**VLLM, "model_size": "7B"}, False, True, 0, None),
    # > 24576: OK
    (24577, {**HF, "model_size": "14B"}, True, True, 0, None),
    (24577, {**VLLM, "model_size": "14B", "tensor_parallel": 1}, False, True, 0, None),
]


@pytest.mark.parametrize(("memory", "flags", "same", "feasible", "offcut", "error"), VRAM_ROWS)
def test_vram_table(memory: int, flags: dict, same: bool, feasible: bool, offcut: int, error: str | None) -> None:
    gpus = [gpu(0, memory), gpu(1, memory)]
    outcome = plan(gpus, device_id="0" if same else "0,1", **flags)
    assert outcome.feasible is feasible, outcome
    assert outcome.offcut_token == offcut
    assert outcome.same_gpu is same
    if error is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None and error in outcome.error
        assert f"GPU 0 ({RTX3090}, {memory} MiB)" in outcome.error  # names the GPU and its memory


def test_refusal_message_names_gpu_memory_and_limit() -> None:
    outcome = plan([gpu(0, 16384)], runtime_backend="hf", model_name="M", model_size="14B")
    assert outcome.error == f"GPU 0 ({RTX3090}, 16384 MiB) can hold at most a 3B model; 14B requested"


def test_default_backend_unknown_series_row() -> None:
    # decide() switches default+unknown series to hf/vllm before the table, so this row is only
    # reachable through the table itself; it must still refuse clearly.
    t4 = gpu(0, 16385, name="Tesla T4", cc="7.5")
    verdict = vram_table(t4, Decimal(7), "7B", "default", "", True)
    assert verdict.error is not None and "cannot run the default backend" in verdict.error
    assert "GPU 0 (Tesla T4, 16385 MiB)" in verdict.error
    known = vram_table(gpu(0, 16385), Decimal(7), "7B", "default", "RTX 30", True)
    assert (known.error, known.offcut_token) == (None, 1400)


def test_offcut_token_message_gives_the_context_limit() -> None:
    outcome = plan([gpu(0, 16385)], runtime_backend="hf", model_name="M", model_size="7B")
    assert any("limited to 1396 tokens (OFFCUT_TOKEN=2700)" in m for m in outcome.messages)


# ------------------------------------------------------------------------------------------------
# GPU series and the automatic backend switch


@pytest.mark.parametrize(
    ("name", "series"),
    [
        ("NVIDIA GeForce RTX 3090", "RTX 30"),
        ("NVIDIA GeForce RTX 4090", "RTX 40"),
        ("NVIDIA GeForce RTX3060", "RTX30"),
        ("NVIDIA A10G", "A10"),
        ("NVIDIA A800-SXM4-80GB", "A800"),
        ("NVIDIA A40", "A40"),
        ("Tesla T4", ""),
        ("NVIDIA GeForce RTX 2080 Ti", ""),
        ("NVIDIA H100 80GB HBM3", ""),
    ],
)
def test_series(name: str, series: str) -> None:
    assert plan([gpu(0, 30000, name=name)], llm_api="cloud").series == series


@pytest.mark.parametrize(
    ("name", "memory", "cc", "backend"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "9.0", "vllm"),  # >= 24000 MiB and >= 8.6
        ("NVIDIA L4", 23034, "8.9", "hf"),  # too little memory for vllm
        ("Quadro RTX 8000", 49152, "7.5", "hf"),  # capability too low for vllm
        ("NVIDIA RTX 6000 Ada Generation", 49140, "8.9", "vllm"),
        ("NVIDIA GeForce RTX 3090", 24576, "8.6", "default"),  # known series: no switch
    ],
)
def test_automatic_backend_switch(name: str, memory: int, cc: str, backend: str) -> None:
    outcome = plan([gpu(0, memory, name=name, cc=cc)], model_name="Qwen-7B")
    assert outcome.requested_backend == "default"
    assert outcome.runtime_backend == backend
    assert outcome.feasible, outcome.error
    if backend != "default":
        assert any(f"switched to {backend}" in m and name in m for m in outcome.messages)


def test_no_switch_for_a_0b_model() -> None:
    outcome = plan([gpu(0, 16000, name="Tesla T4", cc="7.5")], model_size="0B")
    assert (outcome.runtime_backend, outcome.feasible) == ("default", True)


def test_switch_without_model_name_is_infeasible_naming_m() -> None:
    outcome = plan([gpu(0, 16000, name="Tesla T4", cc="7.5")])
    assert not outcome.feasible
    assert outcome.runtime_backend == "hf"
    assert outcome.error is not None and outcome.error.startswith("-m/--model-name:")


def test_tensor_parallel_forces_vllm() -> None:
    gpus = [gpu(0, 24576), gpu(1, 24576)]
    outcome = plan(gpus, device_id="0,1", runtime_backend="hf", model_name="M", model_size="7B")
    assert outcome.tensor_parallel == 2  # 0 -> number of device ids
    assert (outcome.requested_backend, outcome.runtime_backend) == ("hf", "vllm")
    assert any("Tensor parallel 2 needs the vllm backend" in m for m in outcome.messages)
    assert outcome.feasible and outcome.offcut_token == 0


def test_two_ids_mean_tensor_parallel_two_and_vllm_as_the_seed_says() -> None:
    # the seed: "with two RTX 3090s the backend becomes vllm"; master sets -p to the number of ids
    gpus = [gpu(0, 24576), gpu(1, 24576)]
    outcome = plan(gpus, device_id="0,1", model_name="M", model_size="7B")
    assert outcome.tensor_parallel == 2
    assert (outcome.requested_backend, outcome.runtime_backend) == ("default", "vllm")
    assert any("Tensor parallel 2 needs the vllm backend: switched from default to vllm" in m for m in outcome.messages)
    assert outcome.feasible
    four = plan([gpu(i, 24576) for i in range(4)], device_id="0,1,2,3", model_name="M", model_size="7B")
    assert (four.tensor_parallel, four.runtime_backend, four.device_ids) == (4, "vllm", (0, 1, 2, 3))


def test_tensor_parallel_one_keeps_backend_on_two_gpus() -> None:
    gpus = [gpu(0, 24576), gpu(1, 24576)]
    outcome = plan(gpus, device_id="0,1", tensor_parallel=1)
    assert (outcome.runtime_backend, outcome.gpu_id1, outcome.gpu_id2, outcome.same_gpu) == ("default", 0, 1, False)


# ------------------------------------------------------------------------------------------------
# Tensor parallel total: GPU memory x tp x utilization >= size x 2 x 1024 MiB


@pytest.mark.parametrize(
    ("memories", "size", "utilization", "feasible"),
    [
        ([16384, 16384], "14B", 0.81, False),  # 26542 < 28672
        ([16384, 16384], "7B", 0.81, True),  # 26542 >= 14336
        ([24576, 24576], "14B", 0.81, True),  # 39813 >= 28672
        ([24576, 24576], "14B", 0.5, False),  # 24576 < 28672
        ([24576, 8192], "7B", 0.81, False),  # the smallest GPU counts: 13271 < 14336 (#107 fix)
        ([17696, 17696], "14B", 0.81, False),  # floor(28667.52) = 28667 < 28672: the edge
        ([17700, 17700], "14B", 0.81, True),  # 28674 >= 28672
        ([16384, 16384], "0B", 0.81, True),
    ],
)
def test_tensor_parallel_total(memories: list[int], size: str, utilization: float, feasible: bool) -> None:
    gpus = [gpu(i, m) for i, m in enumerate(memories)]
    outcome = plan(
        gpus, device_id="0,1", runtime_backend="vllm", model_name="M", model_size=size,
        gpu_memory_utilization=utilization,
    )
    total = int(min(memories) * 2 * utilization)
    assert feasible == (total >= float(size[:-1]) * 2048)
    assert outcome.feasible is feasible, outcome.error
    if not feasible:
        assert outcome.error is not None and f"give {total} MiB" in outcome.error
        assert f"needs at least {int(float(size[:-1]) * 2048)} MiB" in outcome.error


def test_tensor_parallel_floor_of_4000() -> None:
    gpus = [gpu(0, 3000), gpu(1, 3000)]
    outcome = plan(gpus, device_id="0,1", runtime_backend="vllm", model_name="M", model_size="0B")
    assert not outcome.feasible and "less than 4000 MiB" in (outcome.error or "")
    # the floor holds for every GPU the model spans, not only GPU1
    second = plan([gpu(0, 24576), gpu(1, 3000)], device_id="0,1", runtime_backend="vllm", model_name="M",
                  model_size="1.8B")
    assert not second.feasible and "less than 4000 MiB" in (second.error or "") and "GPU 1" in (second.error or "")


# ------------------------------------------------------------------------------------------------
# No GPU, unknown GPU ids, OCR, busy GPUs


def test_no_gpu_local_model() -> None:
    outcome = plan([])
    assert not outcome.feasible
    assert outcome.error is not None and "no GPU found" in outcome.error and "7B" in outcome.error
    assert (outcome.gpu_id1, outcome.gpu_id2, outcome.ocr_use_gpu) == (None, None, False)
    assert outcome.env()["GPUID1"] == ""


def test_no_gpu_cloud() -> None:
    outcome = plan([], llm_api="cloud")
    assert not outcome.feasible
    assert outcome.error is not None and "no GPU found" in outcome.error and "4000 MiB" in outcome.error


def test_device_id_not_in_inventory() -> None:
    outcome = plan([gpu(0), gpu(1, name="Tesla T4")], device_id="0,3", tensor_parallel=1)
    assert not outcome.feasible
    assert outcome.error == "-i/--device-id: GPU 3 does not exist; this machine has GPU 0 (NVIDIA GeForce RTX 3090), 1 (Tesla T4)"


@pytest.mark.parametrize(
    ("cc1", "cc2", "ocr"),
    [("8.6", "8.6", True), ("7.5", "7.5", True), ("8.6", "7.0", False), ("6.1", "7.5", True), ("12.0", "12.0", True)],
)
def test_ocr_use_gpu_follows_gpu2(cc1: str, cc2: str, ocr: bool) -> None:
    gpus = [gpu(0, 30000, cc=cc1), gpu(1, 30000, cc=cc2)]
    outcome = plan(gpus, llm_api="cloud", device_id="0,1", tensor_parallel=1)
    assert outcome.ocr_use_gpu is ocr
    assert outcome.env()["OCR_USE_GPU"] == ("True" if ocr else "False")


def test_busy_gpu_is_reported() -> None:
    outcome = plan([gpu(0, 24576, free=2000)])
    assert outcome.feasible
    assert any("only 2000 MiB free" in m and "22576 MiB" in m for m in outcome.messages)
    assert not any("MiB free" in m for m in plan([gpu(0, 24576, free=24000)]).messages)


# ------------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize(
    ("flags", "option", "message"),
    [
        ({"llm_api": "remote"}, "-c/--llm-api", "'remote' must be local or cloud"),
        ({"device_id": "0,a"}, "-i/--device-id", '"0,a" is not a list of GPU ids like 0 or 0,1'),
        ({"device_id": ""}, "-i/--device-id", "is not a list of GPU ids"),
        ({"device_id": "0,"}, "-i/--device-id", "is not a list of GPU ids"),
        ({"device_id": "1,1"}, "-i/--device-id", "lists GPU 1 twice"),
        ({"runtime_backend": "trt"}, "-b/--runtime-backend", "must be default, hf, vllm or sglang"),
        ({"runtime_backend": "hf"}, "-m/--model-name", "give its folder name with -m"),
        ({"runtime_backend": "vllm", "model_name": "-t"}, "-m/--model-name", "looks like a flag"),
        ({"runtime_backend": "vllm", "model_name": "../etc"}, "-m/--model-name", "not a path"),
        ({"runtime_backend": "hf", "model_name": "M"}, "-s/--model-size", "required with the hf backend"),
        ({"model_size": "7"}, "-s/--model-size", '"7" is not a model size like 1.8B'),
        ({"model_size": "1.B"}, "-s/--model-size", "is not a model size"),
        ({"llm_api": "cloud", "model_size": "7B"}, "-s/--model-size", "-c cloud runs no local model"),
        ({"tensor_parallel": 3}, "-p/--tensor-parallel", "must be 1, 2, 4, 8 or 16"),
        ({"tensor_parallel": "x"}, "-p/--tensor-parallel", "must be 1, 2, 4, 8 or 16"),
        ({"tensor_parallel": 2}, "-p/--tensor-parallel", '2 needs 2 GPU ids in -i/--device-id, "0" lists 1'),
        ({"device_id": "0,1,2", "runtime_backend": "vllm", "model_name": "m", "model_size": "7B"}, "-i/--device-id", "lists 3 GPU ids; run.sh accepts 1, 2, 4, 8 or 16"),
        # run.sh's device counts hold for every backend, and no id is ever dropped silently
        ({"device_id": "0,1,2"}, "-i/--device-id", "lists 3 GPU ids"),
        ({"device_id": "0,1,2", "llm_api": "cloud"}, "-i/--device-id", "lists 3 GPU ids"),
        ({"device_id": "0,1,2,3", "llm_api": "cloud"}, "-i/--device-id", "a cloud plan uses two at most"),
        ({"device_id": "0,1,2,3", "tensor_parallel": 1}, "-p/--tensor-parallel", "1 uses two GPU ids at most"),
        ({"device_id": "0,1,2,3", "tensor_parallel": 2, "runtime_backend": "vllm", "model_name": "m",
          "model_size": "7B"}, "-p/--tensor-parallel", "give -p 4 or list only 2 ids"),
        # -i 0,1 with the default -p: tensor parallel 2, so vllm, which needs a model: refused up front
        ({"device_id": "0,1"}, "-m/--model-name", "or -p 1 to run the LLM on GPU 0 and embedding/rerank on GPU 1"),
        ({"device_id": "0,1,2,3"}, "-m/--model-name", "means tensor parallel 4"),
        ({"gpu_memory_utilization": 0}, "-r/--gpu-memory-utilization", "must be a number in (0, 1]"),
        ({"gpu_memory_utilization": "1.5"}, "-r/--gpu-memory-utilization", "must be a number in (0, 1]"),
        ({"gpu_memory_utilization": "nan"}, "-r/--gpu-memory-utilization", "must be a number in (0, 1]"),
        ({"gpu_memory_utilization": "high"}, "-r/--gpu-memory-utilization", "must be a number in (0, 1]"),
    ],
)
def test_input_errors(flags: dict, option: str, message: str) -> None:
    with pytest.raises(PlanInputError) as caught:
        plan([gpu(0), gpu(1), gpu(2)], **flags)
    assert caught.value.option == option
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{option}: ")


def test_accepted_inputs_and_defaults() -> None:
    gpus = [gpu(0, 30000), gpu(1, 30000)]
    assert plan(gpus, llm_api="cloud").model_size == "0B"
    assert plan(gpus).model_size == "7B"
    assert plan(gpus, runtime_backend="hf", model_name="M", model_size="1.8b").model_size == "1.8B"
    one = plan(gpus, tensor_parallel="1", gpu_memory_utilization="1", device_id=" 1 ")
    assert (one.tensor_parallel, one.gpu_memory_utilization, one.gpu_id1, one.gpu_id2) == (1, 1.0, 1, 1)
    assert one.env()["GPU_MEM_UTILI"] == "1"


# ------------------------------------------------------------------------------------------------
# The outcome's views


def test_env_and_when_facts() -> None:
    gpus = [gpu(0, 16385), gpu(1, 16385, cc="7.0")]
    outcome = plan(
        gpus, device_id="0,1", runtime_backend="hf", model_name="Qwen-7B-Chat", model_size="7B",
        conv_template="qwen-7b-chat", tensor_parallel=1,
    )
    assert outcome.env() == {
        "LLM_API": "local",
        "DEVICE_ID": "0,1",
        "RUNTIME_BACKEND": "hf",
        "MODEL_NAME": "Qwen-7B-Chat",
        "MODEL_SIZE": "7B",
        "CONV_TEMPLATE": "qwen-7b-chat",
        "TP": "1",
        "GPU_MEM_UTILI": "0.81",
        "GPUID1": "0",
        "GPUID2": "1",
        "OFFCUT_TOKEN": "1800",
        "OCR_USE_GPU": "False",
        "RERANK_PORT": "9001",
        "EMBED_PORT": "9001",
        "LLM_API_SERVE_PORT": "7802",
        "LLM_API_SERVE_MODEL": "Qwen-7B-Chat",
        "LLM_API_SERVE_CONV_TEMPLATE": "qwen-7b-chat",
    }
    assert outcome.when_facts() == {
        "llm_api": "local",
        "runtime_backend": "hf",
        "requested_backend": "hf",
        "model_size": "7B",
        "same_gpu": False,
        "ocr_use_gpu": False,
        "tensor_parallel": 1,
    }
    data = outcome.to_json()
    assert data["feasible"] is True and data["env"]["OFFCUT_TOKEN"] == "1800"
    assert data["device_ids"] == [0, 1] and isinstance(data["messages"], list)
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.feasible = False  # type: ignore[misc]


def test_p1_with_two_ids_is_llm_on_the_first_and_embed_rerank_on_the_second() -> None:
    """`-i 0,1 -p 1 -b default`: LLM Triton on GPU 0 and embed/rerank on GPU 1, tensor parallel 1 (the explicit
    way; `-p 0` with two ids means tensor parallel 2, as master's script does)."""
    cards = [gpu(0, 24576), gpu(1, 24576)]
    out = decide(PlanInputs(device_id="0,1", tensor_parallel=1), cards)
    assert out.feasible, out.error
    assert (out.tensor_parallel, out.runtime_backend, out.gpu_id1, out.gpu_id2) == (1, "default", 0, 1)
    env = out.env()
    assert env["RERANK_PORT"] == env["EMBED_PORT"] == "9001"
    one = decide(PlanInputs(device_id="0"), cards)
    assert one.env()["RERANK_PORT"] == "10001"
    vllm = decide(PlanInputs(device_id="0,1", runtime_backend="vllm", model_name="Qwen-7B", model_size="7B",
                             conv_template="qwen-7b-chat"), cards)
    assert vllm.tensor_parallel == 2
    assert vllm.env()["LLM_API_SERVE_MODEL"] == "Qwen-7B" and vllm.env()["LLM_API_SERVE_PORT"] == "7802"
