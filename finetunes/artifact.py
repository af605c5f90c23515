"""Is this LoRA adapter deployable on this base model? Decided before anything is copied or loaded.

A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) is checked
against the base model's ``config.json``: rank within the replica's limit, every target module a
module of the base, every tensor a LoRA weight of the right shape, no pickled files (loading a
pickle runs code), a bounded size. Only the safetensors JSON header is read, never the weights,
so a multi-GiB adapter is judged in milliseconds and without torch. Each failure is an
``ArtifactError`` that names the file or field at fault and says what to do, since the person
deploying is often not the one who trained."""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what is hashed, copied and loaded; nothing else
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".ckpt"})
DEFAULT_MAX_BYTES = 2 << 30
MAX_HEADER_BYTES = 100 << 20
LLAMA_STYLE = frozenset({"llama", "mistral", "qwen2", "qwen3"})  # q/k/v/o_proj + gate/up/down_proj
# Bytes per element of the float dtypes a LoRA weight may have.
FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
# PEFT's saved names, e.g. base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
LORA_TENSOR = re.compile(r"^(?:.+\.)?layers\.(\d+)\.(?:.+\.)?([A-Za-z0-9_]+)\.lora_([AB])\.weight$")
_CHUNK = 1 << 20


class ArtifactError(ValueError):
    """An adapter that must not be deployed; ``where`` is the file or field at fault."""

    def __init__(self, message: str, where: str):
        super().__init__(f"{where}: {message}")
        self.message = message
        self.where = where


@dataclass(frozen=True, slots=True)
class BaseModelShape:
    """The linear layers a LoRA adapter may target: name → (in_features, out_features)."""

    modules: dict[str, tuple[int, int]]
    num_layers: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BaseModelShape:
        """From a Llama/Mistral/Qwen2-style decoder's ``config.json``."""
        model_type = config.get("model_type")
        if model_type is not None and model_type not in LLAMA_STYLE:
            raise ArtifactError(
                f"LoRA adapters are validated only for Llama/Mistral/Qwen2-style decoders "
                f"({', '.join(sorted(LLAMA_STYLE))}), not '{model_type}'", "config.json: model_type")
        if "hidden_size" not in config or "num_attention_heads" not in config:
            raise ArtifactError("unknown architecture: no hidden_size / num_attention_heads",
                                "config.json: hidden_size")

        def positive(field: str, default: int | None = None) -> int:
            value = config.get(field, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArtifactError(f"expected a positive integer, got {value!r}", f"config.json: {field}")
            return value

        hidden, heads = positive("hidden_size"), positive("num_attention_heads")
        kv_heads = positive("num_key_value_heads", heads)
        head_dim = config.get("head_dim") or hidden // heads
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ArtifactError(f"expected a positive integer, got {head_dim!r}", "config.json: head_dim")
        intermediate = positive("intermediate_size")
        return cls(
            modules={
                "q_proj": (hidden, heads * head_dim),
                "k_proj": (hidden, kv_heads * head_dim),
                "v_proj": (hidden, kv_heads * head_dim),
                "o_proj": (heads * head_dim, hidden),
                "gate_proj": (hidden, intermediate),
                "up_proj": (hidden, intermediate),
                "down_proj": (intermediate, hidden),
            },
            num_layers=positive("num_hidden_layers"),
        )


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    declared_base: str | None  # base_model_name_or_path as trained: informative only (often a hub id)
    files: tuple[str, ...]  # relative to the folder; exactly what the digest covers
    size_bytes: int
    digest: str  # "sha256:<hex>"


def validate_adapter(
    folder: Path,
    base_model: str,
    base_config: dict[str, Any],
    max_lora_rank: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> AdapterInfo:
    """The adapter's facts if ``folder`` may be deployed on ``base_model``; else ``ArtifactError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError("no such folder; point at the PEFT output folder (adapter_config.json + "
                            "adapter_model.safetensors)", str(folder))
    shape = BaseModelShape.from_config(base_config)
    config = _read_config(folder)
    rank, alpha, targets = _check_config(config, base_model, shape, max_lora_rank)
    _refuse_pickles(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError("missing; save the adapter with save_pretrained(..., safe_serialization=True)",
                            WEIGHTS_FILE)
    before = _stamps(folder)
    size = sum(size for size, _ in before.values())
    if size > max_bytes:
        raise ArtifactError(f"the adapter is {size:,} bytes; the limit is {max_bytes:,} "
                            "(finetune_max_bytes in the settings)", WEIGHTS_FILE)
    _check_tensors(_read_header(weights), rank, targets, shape, base_model)
    digest = digest_files(folder, ADAPTER_FILES)
    if _stamps(folder) != before:
        raise ArtifactError("changed while it was being validated; deploy again once it is written",
                            str(folder))
    return AdapterInfo(rank, alpha, targets, config.get("base_model_name_or_path") or None,
                       ADAPTER_FILES, size, digest)


def digest_files(folder: Path, files: tuple[str, ...]) -> str:
    """sha256 over each file's relative path, length and bytes, in path order: names count too."""
    hasher = hashlib.sha256()
    for relative in sorted(files):
        path = folder / relative
        hasher.update(relative.encode() + b"\0" + path.stat().st_size.to_bytes(8, "little"))
        with path.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    stats = {name: (folder / name).stat() for name in ADAPTER_FILES}
    return {name: (stat.st_size, stat.st_mtime_ns) for name, stat in stats.items()}


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError("missing; it is written by PEFT's save_pretrained next to the weights", CONFIG_FILE)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"not valid JSON ({error})", CONFIG_FILE) from None
    if not isinstance(config, dict):
        raise ArtifactError("not a JSON object", CONFIG_FILE)
    return config


def _check_config(
    config: dict[str, Any], base_model: str, shape: BaseModelShape, max_lora_rank: int,
) -> tuple[int, float, tuple[str, ...]]:
    peft_type = config.get("peft_type")
    if peft_type is not None and str(peft_type).upper() != "LORA":
        raise ArtifactError(f"only LoRA adapters are served, not {peft_type}", f"{CONFIG_FILE}: peft_type")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ArtifactError(f"the LoRA rank must be an integer ≥ 1, got {rank!r}", f"{CONFIG_FILE}: r")
    if rank > max_lora_rank:
        raise ArtifactError(
            f"rank {rank} exceeds the replica's limit of {max_lora_rank} for {base_model}; train with a "
            f"lower rank, or raise max_lora_rank of in_house_models.{base_model} in the catalog",
            f"{CONFIG_FILE}: r")
    if config.get("rank_pattern"):
        raise ArtifactError("per-module ranks are not supported; train with one rank r",
                            f"{CONFIG_FILE}: rank_pattern")
    alpha = config.get("lora_alpha", 8)  # PEFT's default
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ArtifactError(f"expected a positive number, got {alpha!r}", f"{CONFIG_FILE}: lora_alpha")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if (not isinstance(targets, list) or not targets
            or not all(isinstance(name, str) and name for name in targets)):
        raise ArtifactError(f"expected a non-empty list of module names, got {targets!r}",
                            f"{CONFIG_FILE}: target_modules")
    # PEFT matches a target by suffix, and saves "all-linear" as full paths (model.layers.0.mlp.up_proj).
    unknown = sorted({name for name in targets if name.rsplit(".", 1)[-1] not in shape.modules})
    if unknown:
        raise ArtifactError(
            f"{', '.join(unknown)} is not a module of {base_model} (its modules: "
            f"{', '.join(shape.modules)}; regular expressions and 'all-linear' are not supported)",
            f"{CONFIG_FILE}: target_modules")
    return rank, float(alpha), tuple(sorted({name.rsplit(".", 1)[-1] for name in targets}))


def _refuse_pickles(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ArtifactError(
                "pickled files can run code when loaded and are not accepted, even unused; remove it, or "
                "convert weights with safetensors (save_pretrained(..., safe_serialization=True), or "
                "safetensors.torch.save_file(torch.load(path, weights_only=True), ...))",
                path.relative_to(folder).as_posix())


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header (8-byte little-endian length, then JSON), checked against the file."""
    file_size = path.stat().st_size
    with path.open("rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise ArtifactError("not a safetensors file (too short)", WEIGHTS_FILE)
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, file_size - 8):
            raise ArtifactError(f"not a safetensors file, or truncated (header of {length:,} bytes in a "
                                f"file of {file_size:,})", WEIGHTS_FILE)
        raw = stream.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"the safetensors header is not valid JSON ({error})", WEIGHTS_FILE) from None
    if not isinstance(header, dict):
        raise ArtifactError("the safetensors header is not a JSON object", WEIGHTS_FILE)
    header.pop("__metadata__", None)
    data_size, covered = file_size - 8 - length, 0
    for name, entry in header.items():
        where = f"{WEIGHTS_FILE}: {name}"
        if not isinstance(entry, dict) or entry.get("dtype") not in FLOAT_DTYPES:
            dtype = entry.get("dtype") if isinstance(entry, dict) else None
            raise ArtifactError(f"dtype {dtype!r} is not a float type ({', '.join(FLOAT_DTYPES)})", where)
        tensor_shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(tensor_shape, list) and all(_natural(n) for n in tensor_shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(_natural(n) for n in offsets)):
            raise ArtifactError("malformed entry in the safetensors header", where)
        begin, end = offsets
        if not begin <= end <= data_size or end - begin != math.prod(tensor_shape) * FLOAT_DTYPES[entry["dtype"]]:
            raise ArtifactError("its data lies outside the file or does not match its shape (truncated?)", where)
        covered += end - begin
    if covered != data_size:
        raise ArtifactError(f"{data_size - covered:,} bytes of data belong to no tensor (corrupt file)",
                            WEIGHTS_FILE)
    return header


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tensors(
    header: dict[str, Any], rank: int, targets: tuple[str, ...], shape: BaseModelShape, base_model: str,
) -> None:
    if not header:
        raise ArtifactError("holds no tensors", WEIGHTS_FILE)
    halves: dict[tuple[int, str, str], set[str]] = {}
    for name, entry in sorted(header.items()):
        where = f"{WEIGHTS_FILE}: {name}"
        match = LORA_TENSOR.match(name)
        if match is None:
            raise ArtifactError(
                "not a LoRA weight (…layers.<i>.<module>.lora_A.weight / lora_B.weight); modules_to_save, "
                "DoRA and embedding adapters are not supported", where)
        layer, module, half = int(match[1]), match[2], match[3]
        if layer >= shape.num_layers:
            raise ArtifactError(f"layer {layer} does not exist: {base_model} has {shape.num_layers} layers",
                                where)
        if module not in targets:
            raise ArtifactError(f"module {module} is not in target_modules ({', '.join(targets)})", where)
        in_features, out_features = shape.modules[module]
        expected = [rank, in_features] if half == "A" else [out_features, rank]
        if entry["shape"] != expected:
            raise ArtifactError(f"shape {entry['shape']}, expected {expected} (r={rank}, {module} of "
                                f"{base_model} is {in_features} → {out_features})", where)
        halves.setdefault((layer, module, name[:match.start(3)]), set()).add(half)
    for (layer, module, prefix), found in sorted(halves.items()):
        if found != {"A", "B"}:
            missing = ({"A", "B"} - found).pop()
            raise ArtifactError(f"lora_{missing} of layer {layer}'s {module} is missing",
                                f"{WEIGHTS_FILE}: {prefix}{missing}.weight")
