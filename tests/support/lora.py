"""Real PEFT LoRA adapters for tests: built for a base model folder in a second, with seeded
random weights large enough that the adapter changes what the model answers."""

from __future__ import annotations

from pathlib import Path

QUESTION = "What is the capital of France?"


def build_adapter(base_folder: Path, out: Path, rank: int = 8, seed: int = 0,
                  target_modules: tuple[str, ...] = ("q_proj", "v_proj"), scale: float = 0.15) -> Path:
    """A LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) for the model in
    ``base_folder``, written to ``out``: every lora_A and lora_B filled with normal values of std
    ``scale`` from ``seed`` (alpha = rank, so the update is exactly B @ A). Checks that it changes
    the greedy answer to ``QUESTION`` from its start (0.15 turns SmolLM2-135M's "The capital of
    France is Paris." into unrelated text; 0.05 changes nothing); returns ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.model_source import offline_environment

    offline_environment()
    base_folder, out = Path(base_folder), Path(out)
    tokenizer = AutoTokenizer.from_pretrained(base_folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base_folder, local_files_only=True, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=list(target_modules))
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    filled = 0
    with torch.no_grad():
        for name, parameter in sorted(peft_model.named_parameters()):
            if ".lora_A." in name or ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
                filled += 1
    assert filled, f"no LoRA weights for {target_modules}"

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)

    def greedy() -> str:
        with torch.inference_mode():
            ids = peft_model.generate(**prompt, max_new_tokens=12, do_sample=False,
                                      pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(ids[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)

    adapted = greedy()
    with peft_model.disable_adapter():
        base = greedy()
    # Not a word changed near the end: the answers part within the first few characters.
    assert adapted[:12] != base[:12], f"the adapter (scale {scale}) hardly changes the answer {base!r}: {adapted!r}"

    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out, safe_serialization=True)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    return out
