"""The model ``benchmarks.gpu_check`` serves: a random-weight Llama of a realistic shape, built
locally with the embedded SmolLM2's tokenizer (never downloaded), and reused while its shape holds."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

BUILTIN = "builtin:smollm2-135m-instruct"
STAMP = "neuroapi-gpu-check.json"

# Llama shapes; weights are random (seed 0) and saved in bf16.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 64, "intermediate_size": 512, "max_position_embeddings": 4096,
             "tie_word_embeddings": True},
    "1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
           "head_dim": 64, "intermediate_size": 8192, "max_position_embeddings": 4096,
           "tie_word_embeddings": True},  # Llama-3.2-1B-like
    "8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "head_dim": 128, "intermediate_size": 14336, "max_position_embeddings": 8192,
           "tie_word_embeddings": False},  # Llama-3-8B-like
}


def model_cache_dir() -> Path:
    if os.environ.get("NEUROAPI_MODEL_CACHE_DIR"):
        return Path(os.environ["NEUROAPI_MODEL_CACHE_DIR"])
    from config.settings import load_settings

    return load_settings().models_dir


def build_model(shape: str, folder: Path) -> Path:
    """A random-weight ``LlamaForCausalLM`` of ``shape`` with SmolLM2's tokenizer (reused if built)."""
    wanted = {"shape": shape, **SHAPES[shape]}
    stamp = folder / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        print(f"model: reusing {folder}", flush=True)
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from models.model_source import resolve

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(resolve(BUILTIN, model_cache_dir()))
    config = LlamaConfig(
        **SHAPES[shape], vocab_size=len(tokenizer), rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)  # on the CPU: no CUDA here
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder, safe_serialization=True)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    stamp.write_text(json.dumps(wanted))
    parameters = sum(p.numel() for p in model.parameters())
    del model
    print(f"model: {shape} ({parameters / 1e9:.2f}B parameters, vocab {len(tokenizer)}) built in "
          f"{time.perf_counter() - started:.0f}s at {folder}", flush=True)
    return folder
