"""PEFT-layout LoRA adapter folders for a tiny fake Llama, written with safetensors in a
moment (zero B matrices: the validation tests need the layout, not a useful update). Needs torch:
import it after ``pytest.importorskip("torch")``. For real adapters on the built-in model, see
``tests.support.lora``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from finetunes.artifact import CONFIG_FILE, WEIGHTS_FILE, BaseModelShape

# A tiny Llama: head_dim 16, q/o 64 → 64, k/v 64 → 32, gate/up 64 → 128, down 128 → 64.
FAKE = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 2}
BASE = "tiny-llama"
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}


def tensor_name(layer: int, module: str, half: str) -> str:
    block = "self_attn" if module in ATTENTION else "mlp"
    return f"base_model.model.model.layers.{layer}.{block}.{module}.lora_{half}.weight"


def lora_tensors(base: dict, r: int, targets: tuple[str, ...], dtype=torch.float32) -> dict:
    shape = BaseModelShape.from_config(base)
    tensors = {}
    for layer in range(shape.num_layers):
        for module in targets:
            in_features, out_features = shape.modules[module]
            tensors[tensor_name(layer, module, "A")] = torch.randn(r, in_features).to(dtype)
            tensors[tensor_name(layer, module, "B")] = torch.zeros(out_features, r, dtype=dtype)
    return tensors


def make_adapter(folder: Path, r: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj"),
                 base: dict = FAKE, config: dict | None = None, tensors: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    adapter_config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(targets),
                      "base_model_name_or_path": "HuggingFaceTB/tiny-llama", "task_type": "CAUSAL_LM",
                      "rank_pattern": {}, "alpha_pattern": {}}
    adapter_config.update(config or {})
    (folder / CONFIG_FILE).write_text(json.dumps(adapter_config))
    save_file(lora_tensors(base, r, targets) if tensors is None else tensors, str(folder / WEIGHTS_FILE))
    return folder
