"""LoRA adapter validation: real PEFT-layout folders written with safetensors, one test per refusal."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from finetunes.artifact import (  # noqa: E402
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterInfo,
    ArtifactError,
    BaseModelShape,
    validate_adapter,
)
from tests.support.adapter_files import ATTENTION, BASE, FAKE, lora_tensors, make_adapter, tensor_name  # noqa: E402

# SmolLM2-135M-Instruct's config.json, the fields that matter.
SMOLLM2 = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "head_dim": 64,
           "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
           "num_hidden_layers": 30}


def refused(folder: Path, max_lora_rank: int = 16, base: dict = FAKE, **kwargs) -> ArtifactError:
    with pytest.raises(ArtifactError) as raised:
        validate_adapter(folder, BASE, base, max_lora_rank, **kwargs)
    return raised.value


# --- a valid adapter -------------------------------------------------------------------------------

def test_valid_adapter_info(tmp_path):
    folder = make_adapter(tmp_path / "a", r=8, targets=("v_proj", "q_proj", "down_proj"))
    (folder / "README.md").write_text("trained on tickets")
    info = validate_adapter(folder, BASE, FAKE, max_lora_rank=8)
    assert isinstance(info, AdapterInfo)
    assert (info.rank, info.alpha) == (8, 16.0)
    assert info.target_modules == ("down_proj", "q_proj", "v_proj")
    assert info.declared_base == "HuggingFaceTB/tiny-llama"
    assert info.files == (CONFIG_FILE, WEIGHTS_FILE)  # the README is neither hashed nor copied
    assert info.size_bytes == (folder / CONFIG_FILE).stat().st_size + (folder / WEIGHTS_FILE).stat().st_size
    assert info.digest.startswith("sha256:") and len(info.digest) == len("sha256:") + 64


def test_optional_fields_default(tmp_path):
    folder = make_adapter(tmp_path / "a", targets=("o_proj",), config={"target_modules": "o_proj"})
    config = json.loads((folder / CONFIG_FILE).read_text())
    for field in ("peft_type", "lora_alpha", "base_model_name_or_path"):
        del config[field]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    info = validate_adapter(folder, BASE, FAKE, max_lora_rank=16)
    assert (info.alpha, info.target_modules, info.declared_base) == (8.0, ("o_proj",), None)


def test_full_module_paths_as_peft_saves_all_linear(tmp_path):
    paths = [f"model.layers.{layer}.{'self_attn' if m in ATTENTION else 'mlp'}.{m}"
             for layer in range(2) for m in ("q_proj", "down_proj")]
    folder = make_adapter(tmp_path / "a", targets=("q_proj", "down_proj"), config={"target_modules": paths})
    assert validate_adapter(folder, BASE, FAKE, max_lora_rank=16).target_modules == ("down_proj", "q_proj")


def test_partial_layers_and_half_precision(tmp_path):
    tensors = {name: value.to(torch.bfloat16) for name, value in lora_tensors(FAKE, 4, ("gate_proj",)).items()
               if ".layers.1." in name}
    folder = make_adapter(tmp_path / "a", targets=("gate_proj", "up_proj"), tensors=tensors)
    assert validate_adapter(folder, BASE, FAKE, max_lora_rank=4).rank == 4


def test_digest_stable_and_sensitive(tmp_path):
    tensors = lora_tensors(FAKE, 4, ("q_proj", "v_proj"))
    first = validate_adapter(make_adapter(tmp_path / "a", tensors=tensors), BASE, FAKE, 16).digest
    twin = make_adapter(tmp_path / "b", tensors=tensors)
    (twin / "notes.txt").write_text("not part of the artifact")
    assert validate_adapter(twin, BASE, FAKE, 16).digest == first
    assert validate_adapter(tmp_path / "a", BASE, FAKE, 16).digest == first  # again, same folder

    changed = dict(tensors)
    name = tensor_name(0, "q_proj", "B")
    changed[name] = changed[name].clone()
    changed[name][0, 0] = 1.0
    assert validate_adapter(make_adapter(tmp_path / "c", tensors=changed), BASE, FAKE, 16).digest != first
    other_alpha = make_adapter(tmp_path / "d", tensors=tensors, config={"lora_alpha": 32})
    assert validate_adapter(other_alpha, BASE, FAKE, 16).digest != first


def test_smollm2_shapes_and_adapter(tmp_path):
    shape = BaseModelShape.from_config(SMOLLM2)
    assert shape.num_layers == 30
    assert shape.modules == {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192),
                             "o_proj": (576, 576), "gate_proj": (576, 1536), "up_proj": (576, 1536),
                             "down_proj": (1536, 576)}
    folder = make_adapter(tmp_path / "a", r=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"), base=SMOLLM2)
    info = validate_adapter(folder, "smollm2-135m-instruct", SMOLLM2, max_lora_rank=16)
    assert info.rank == 8 and len(info.target_modules) == 4


def test_smollm2_config_on_disk_matches():
    """The converted built-in model, when this machine has it (never converted here: slow)."""
    from config.settings import load_settings

    configured = os.environ.get("NEUROAPI_MODEL_CACHE_DIR")
    models_dir = Path(configured) if configured else load_settings(environ=os.environ).models_dir
    path = models_dir / "smollm2-135m-instruct" / "config.json"
    if not path.is_file():
        pytest.skip("the built-in model has not been converted on this machine")
    on_disk = BaseModelShape.from_config(json.loads(path.read_text()))
    assert on_disk == BaseModelShape.from_config(SMOLLM2)


# --- the base model --------------------------------------------------------------------------------

def test_base_shape_explicit_head_dim():
    shape = BaseModelShape.from_config({**FAKE, "head_dim": 32})
    assert shape.modules["q_proj"] == (64, 128) and shape.modules["o_proj"] == (128, 64)
    assert shape.modules["k_proj"] == (64, 64)


def test_base_shape_kv_heads_default_to_heads():
    config = {key: value for key, value in FAKE.items() if key != "num_key_value_heads"}
    assert BaseModelShape.from_config(config).modules["k_proj"] == (64, 64)


def test_unknown_architecture():
    with pytest.raises(ArtifactError) as raised:
        BaseModelShape.from_config({"d_model": 512, "num_layers": 6})
    assert raised.value.where == "config.json: hidden_size" and "unknown architecture" in raised.value.message


def test_other_model_type():
    with pytest.raises(ArtifactError) as raised:
        BaseModelShape.from_config({**FAKE, "model_type": "phi3"})
    assert raised.value.where == "config.json: model_type" and "phi3" in raised.value.message


def test_bad_base_field():
    with pytest.raises(ArtifactError) as raised:
        BaseModelShape.from_config({**FAKE, "num_hidden_layers": "2"})
    assert raised.value.where == "config.json: num_hidden_layers"


# --- the folder and adapter_config.json ------------------------------------------------------------

def test_no_folder(tmp_path):
    error = refused(tmp_path / "nowhere")
    assert error.where == str(tmp_path / "nowhere") and "no such folder" in error.message


def test_no_config(tmp_path):
    folder = make_adapter(tmp_path / "a")
    (folder / CONFIG_FILE).unlink()
    error = refused(folder)
    assert error.where == CONFIG_FILE and "missing" in error.message


def test_config_not_json(tmp_path):
    folder = make_adapter(tmp_path / "a")
    (folder / CONFIG_FILE).write_text("{'r': 8,")
    error = refused(folder)
    assert error.where == CONFIG_FILE and "not valid JSON" in error.message


def test_config_not_an_object(tmp_path):
    folder = make_adapter(tmp_path / "a")
    (folder / CONFIG_FILE).write_text("[1, 2]")
    assert refused(folder).where == CONFIG_FILE


def test_not_lora(tmp_path):
    error = refused(make_adapter(tmp_path / "a", config={"peft_type": "PREFIX_TUNING"}))
    assert error.where == "adapter_config.json: peft_type" and "PREFIX_TUNING" in error.message


@pytest.mark.parametrize("rank", [0, -1, "8", 8.0, True, None])
def test_bad_rank(tmp_path, rank):
    error = refused(make_adapter(tmp_path / "a", config={"r": rank}))
    assert error.where == "adapter_config.json: r" and "integer" in error.message


def test_rank_over_the_replica_limit(tmp_path):
    error = refused(make_adapter(tmp_path / "a", r=32), max_lora_rank=16)
    assert error.where == "adapter_config.json: r"
    assert "limit of 16" in error.message and "max_lora_rank" in error.message and "catalog" in error.message


def test_per_module_ranks(tmp_path):
    error = refused(make_adapter(tmp_path / "a", config={"rank_pattern": {"q_proj": 8}}))
    assert error.where == "adapter_config.json: rank_pattern"


@pytest.mark.parametrize("alpha", [0, -8, "16", False])
def test_bad_alpha(tmp_path, alpha):
    assert refused(make_adapter(tmp_path / "a", config={"lora_alpha": alpha})).where == \
        "adapter_config.json: lora_alpha"


@pytest.mark.parametrize("targets", [[], None, {"q_proj": 1}, [""], [3]])
def test_bad_target_modules(tmp_path, targets):
    error = refused(make_adapter(tmp_path / "a", config={"target_modules": targets}))
    assert error.where == "adapter_config.json: target_modules" and "non-empty list" in error.message


def test_target_module_not_in_base(tmp_path):
    error = refused(make_adapter(tmp_path / "a", config={"target_modules": ["q_proj", "lm_head"]}))
    assert error.where == "adapter_config.json: target_modules"
    assert "lm_head is not a module" in error.message and BASE in error.message
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in error.message


# --- files -----------------------------------------------------------------------------------------

def test_no_weights(tmp_path):
    folder = make_adapter(tmp_path / "a")
    (folder / WEIGHTS_FILE).unlink()
    error = refused(folder)
    assert error.where == WEIGHTS_FILE and "safe_serialization" in error.message


@pytest.mark.parametrize("relative", ["adapter_model.bin", "checkpoint-100/optimizer.pt", "extra.PTH",
                                      "state.pkl", "last.ckpt"])
def test_pickle_anywhere(tmp_path, relative):
    folder = make_adapter(tmp_path / "a")
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    (folder / relative).write_bytes(b"\x80\x04K\x01.")
    error = refused(folder)
    assert error.where == relative and "safetensors" in error.message and "pickle" in error.message


def test_too_big(tmp_path):
    folder = make_adapter(tmp_path / "a")
    error = refused(folder, max_bytes=1000)
    assert error.where == WEIGHTS_FILE and "limit is 1,000" in error.message


# --- adapter_model.safetensors ---------------------------------------------------------------------

def test_not_safetensors(tmp_path):
    folder = make_adapter(tmp_path / "a")
    (folder / WEIGHTS_FILE).write_bytes(b"PK\x03\x04 a zip file, say" * 10)
    error = refused(folder)
    assert error.where == WEIGHTS_FILE and "not a safetensors file" in error.message


def test_header_not_json(tmp_path):
    folder = make_adapter(tmp_path / "a")
    (folder / WEIGHTS_FILE).write_bytes(struct.pack("<Q", 6) + b"{oops}")
    error = refused(folder)
    assert error.where == WEIGHTS_FILE and "not valid JSON" in error.message


def test_truncated(tmp_path):
    folder = make_adapter(tmp_path / "a")
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[:-100])
    error = refused(folder)
    assert error.where.startswith(WEIGHTS_FILE) and "truncated" in error.message


def test_no_tensors(tmp_path):
    error = refused(make_adapter(tmp_path / "a", tensors={}))
    assert error.where == WEIGHTS_FILE and "no tensors" in error.message


def test_not_a_lora_weight(tmp_path):
    tensors = lora_tensors(FAKE, 4, ("q_proj", "v_proj"))
    tensors["base_model.model.lm_head.weight"] = torch.zeros(8, 64)
    error = refused(make_adapter(tmp_path / "a", tensors=tensors))
    assert error.where == "adapter_model.safetensors: base_model.model.lm_head.weight"
    assert "not a LoRA weight" in error.message


def test_layer_out_of_range(tmp_path):
    tensors = lora_tensors(FAKE, 4, ("q_proj", "v_proj"))
    tensors[tensor_name(2, "q_proj", "A")] = torch.zeros(4, 64)
    tensors[tensor_name(2, "q_proj", "B")] = torch.zeros(64, 4)
    error = refused(make_adapter(tmp_path / "a", tensors=tensors))
    assert error.where == f"adapter_model.safetensors: {tensor_name(2, 'q_proj', 'A')}"
    assert "layer 2" in error.message and "2 layers" in error.message


def test_module_not_targeted(tmp_path):
    tensors = lora_tensors(FAKE, 4, ("q_proj", "k_proj", "v_proj"))
    error = refused(make_adapter(tmp_path / "a", tensors=tensors, targets=("q_proj", "v_proj")))
    assert error.where == f"adapter_model.safetensors: {tensor_name(0, 'k_proj', 'A')}"
    assert "not in target_modules" in error.message


def test_lora_a_wrong_shape(tmp_path):
    tensors = lora_tensors(FAKE, 4, ("q_proj", "v_proj"))
    tensors[tensor_name(1, "v_proj", "A")] = torch.zeros(4, 32)
    error = refused(make_adapter(tmp_path / "a", tensors=tensors))
    assert error.where == f"adapter_model.safetensors: {tensor_name(1, 'v_proj', 'A')}"
    assert "shape [4, 32], expected [4, 64]" in error.message


def test_lora_b_wrong_shape(tmp_path):
    tensors = lora_tensors(FAKE, 4, ("q_proj", "v_proj"))
    tensors[tensor_name(0, "v_proj", "B")] = torch.zeros(64, 4)  # k/v project to kv_heads * head_dim = 32
    error = refused(make_adapter(tmp_path / "a", tensors=tensors))
    assert error.where == f"adapter_model.safetensors: {tensor_name(0, 'v_proj', 'B')}"
    assert "shape [64, 4], expected [32, 4]" in error.message


def test_rank_in_tensors_differs_from_config(tmp_path):
    error = refused(make_adapter(tmp_path / "a", tensors=lora_tensors(FAKE, 8, ("q_proj", "v_proj")), r=4))
    assert "expected [4, 64]" in error.message and "r=4" in error.message


def test_half_missing(tmp_path):
    tensors = lora_tensors(FAKE, 4, ("q_proj", "v_proj"))
    del tensors[tensor_name(1, "q_proj", "B")]
    error = refused(make_adapter(tmp_path / "a", tensors=tensors))
    assert error.where == f"adapter_model.safetensors: {tensor_name(1, 'q_proj', 'B')}"
    assert "lora_B" in error.message and "missing" in error.message


def test_integer_tensor(tmp_path):
    tensors = lora_tensors(FAKE, 4, ("q_proj", "v_proj"))
    tensors[tensor_name(0, "q_proj", "A")] = torch.zeros(4, 64, dtype=torch.int32)
    error = refused(make_adapter(tmp_path / "a", tensors=tensors))
    assert error.where == f"adapter_model.safetensors: {tensor_name(0, 'q_proj', 'A')}"
    assert "'I32' is not a float type" in error.message
