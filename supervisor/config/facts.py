"""The facts a unit's ``[when]`` table can test, and the values each can take: the one schema that the unit
loader validates ``[when]`` against and that QAnything's plan (:mod:`supervisor.plan.qanything`) produces.

A fact's name is also the name of the plan outcome's attribute that holds it.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["BACKENDS", "LLM_APIS", "TENSOR_PARALLEL_SIZES", "WHEN_FACTS", "Fact"]

LLM_APIS = ("local", "cloud")
BACKENDS = ("default", "hf", "vllm", "sglang")
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16)

Fact = tuple[type, tuple[object, ...] | None]
"""A fact's type and the values it can take (None: any value of that type)."""

WHEN_FACTS: MappingProxyType[str, Fact] = MappingProxyType({
    "llm_api": (str, LLM_APIS),
    "runtime_backend": (str, BACKENDS),       # after the plan's automatic switches
    "requested_backend": (str, BACKENDS),     # as asked (-b or [plan])
    "model_size": (str, None),
    "same_gpu": (bool, None),                 # gpu_id1 == gpu_id2
    "ocr_use_gpu": (bool, None),
    "tensor_parallel": (int, TENSOR_PARALLEL_SIZES),
})
"""Fact name -> (type, allowed values), in the order ``unknown condition`` messages list them."""
