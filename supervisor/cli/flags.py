"""The run.sh flags that ``up``, ``check`` and ``plan`` accept: each overrides one key of the stack file's
``[plan]`` table. Standard library only (the argument parser imports it).
"""

from __future__ import annotations

CONFIG_VERBS = ("up", "check", "plan")
"""The verbs that read the configuration (supervisor.cli.config_verbs); every other verb is a control verb."""

RUNSH_FLAGS = (
    # (short, long, dest, type, help)
    ("-c", "--llm-api", "llm_api", str, "local or cloud (default: local)"),
    ("-i", "--device-id", "device_id", str, 'GPU ids, e.g. "0" or "0,1" (default: 0)'),
    ("-b", "--runtime-backend", "runtime_backend", str, "default, hf, vllm or sglang (default: default)"),
    ("-m", "--model-name", "model_name", str, "model folder under /model_repos/CustomLLM (hf, vllm, sglang)"),
    ("-s", "--model-size", "model_size", str, 'model size such as "7B" or "1.8B" (0B for cloud)'),
    ("-t", "--conv-template", "conv_template", str, "FastChat conversation template"),
    ("-p", "--tensor-parallel", "tensor_parallel", int, "1, 2, 4, 8 or 16; 0 (default): one per GPU id in -i for a local LLM (-i 0,1: 2, so vllm); -p 1 -i 0,1: LLM on GPU 0, embed/rerank on GPU 1"),
    ("-r", "--gpu-memory-utilization", "gpu_memory_utilization", float, "vLLM's share of GPU memory (0.81)"),
)

SUBSET_FLAGS = (
    # (long, dest, help): repeatable, comma lists; mutually exclusive (checked by the plan: a usage error, exit 2)
    ("--only", "only", "run only these units here (NAME[,NAME...], repeatable; also $QASUP_ONLY): a unit outside "
                       "them that one of them requires or is after is waited on through its [ready] probes"),
    ("--except", "exclude", "run every unit of the plan here but these (NAME[,NAME...], repeatable; also "
                            "$QASUP_EXCEPT)"),
)
"""The subset flags of ``up``, ``check`` and ``plan``: the part of the stack this machine runs."""
