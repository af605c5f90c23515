"""The one interface every in-house inference engine offers (vLLM on GPU or CPU, transformers).

The model deployment (``models.deployment``) owns the tokenizer and the chat template, so an
engine sees token ids in and streams text deltas out; everything about OpenAI's wire format
stays in ``models.openai_format``. An engine counts what it did (``EngineStats``) so a test or
an operator can see that a request the caller abandoned was really aborted in the engine.

A request may name a LoRA fine-tune (``LoraAdapter``): the engine applies it to that request only,
on the same base weights, and keeps up to ``EngineOptions.max_loras`` of them resident."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from core.backend import LoraAdapter


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A constraint on the completion's text: JSON matching ``json_schema`` (JSON text), or any
    JSON object when it is None (OpenAI's ``json_object``)."""

    json_schema: str | None = None


@dataclass(frozen=True, slots=True)
class Sampling:
    """What the caller asked for; ``max_tokens`` is already fitted to the context length."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    structured: StructuredOutput | None = None  # constrained decoding (response_format, forced tools)
    logprobs: int | None = None  # None: none; k: each token's logprob and its k most likely alternatives
    n: int = 1  # completions of the same prompt
    keep_special_tokens: bool = False  # in the text: a tool-call parser may look for them


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token: its text, log probability, and the most likely alternatives there."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """New text since the previous delta of choice ``index``, and that choice's token count so far."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None  # "stop" or "length" on the last delta of a choice
    index: int = 0  # which of the ``n`` completions
    token_ids: tuple[int, ...] = ()  # the new tokens (a tool-call parser may need them)
    logprobs: tuple[TokenLogprob, ...] = ()  # the new tokens', when Sampling.logprobs asked for them


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int  # requests the engine still holds (generating or being torn down)
    finished: int  # requests that ran to a stop or to max_tokens
    aborted: int  # requests cancelled before they finished (caller gone)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How to run one model, from its catalog entry (``config.catalog.InHouseModelSpec``)."""

    model_path: Path
    max_model_len: int
    max_num_seqs: int = 16  # requests batched together
    dtype: str = "auto"
    # vLLM only; a CPU engine ignores the GPU ones.
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float = 1.0
    enforce_eager: bool = True
    # LoRA fine-tunes: the largest adapter rank accepted (0 = LoRA off) and how many adapters
    # stay resident per replica (the least recently used one is evicted beyond that).
    max_lora_rank: int = 0
    max_loras: int = 4
    extra: dict = field(default_factory=dict)  # passed to the engine as is (engine_kwargs)


class EngineError(RuntimeError):
    """The engine failed a request or is unhealthy; the message holds no prompt text."""


class RequestRefused(EngineError):
    """The engine cannot serve this request as asked (e.g. a JSON schema its grammar compiler
    rejects): the caller's mistake, answered with a 400, not a failure another backend may retry."""


LORA_OFF = "this model's replicas were started without LoRA (max_lora_rank 0)"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter(adapter: LoraAdapter, max_lora_rank: int) -> dict:
    """The adapter's ``adapter_config.json``, once it is known to be a LoRA adapter this engine
    can load: a local folder with safetensors weights and a rank of at most ``max_lora_rank``."""
    if max_lora_rank <= 0:
        raise EngineError(LORA_OFF)
    path = Path(adapter.path)
    config_file, weights = path / "adapter_config.json", path / ADAPTER_WEIGHTS
    if not config_file.is_file():
        raise EngineError(f"adapter {adapter.key}: no adapter_config.json in {path}")
    if not weights.is_file():
        raise EngineError(f"adapter {adapter.key}: no {ADAPTER_WEIGHTS} in {path} (only safetensors weights load)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise EngineError(f"adapter {adapter.key}: unreadable adapter_config.json ({type(error).__name__})") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise EngineError(f"adapter {adapter.key} is not a LoRA adapter (peft_type "
                          f"{config.get('peft_type') if isinstance(config, dict) else None!r})")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise EngineError(f"adapter {adapter.key}: adapter_config.json has no valid rank r")
    ranks = [rank, *(r for r in (config.get("rank_pattern") or {}).values() if isinstance(r, int))]
    if max(ranks) > max_lora_rank:
        raise EngineError(f"adapter {adapter.key} has rank {max(ranks)}, above this model's "
                          f"max_lora_rank {max_lora_rank}")
    return config


class Engine(ABC):
    """One model loaded on this replica."""

    name: str  # "vllm-gpu", "vllm-cpu" or "transformers": what /v1/models reports

    @abstractmethod
    async def start(self) -> None:
        """Load the weights; raises EngineError if the model cannot run here."""

    def unsupported(self, sampling: Sampling) -> str | None:
        """Why this engine cannot honour ``sampling`` (naming the request field), or None; the
        model server answers a 400 with it before generating."""
        return None

    @abstractmethod
    def generate(self, request_id: str, prompt_token_ids: list[int], sampling: Sampling,
                 adapter: LoraAdapter | None = None) -> AsyncIterator[Delta]:
        """Stream the completion (with ``adapter`` applied: loaded first if it is not resident).
        Closing the iterator early aborts the request in the engine."""

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request now (idempotent; unknown ids are ignored)."""

    @abstractmethod
    async def check_health(self) -> None:
        """Raise EngineError if the engine can no longer serve."""

    @abstractmethod
    def stats(self) -> EngineStats: ...

    async def load_adapter(self, adapter: LoraAdapter) -> None:
        """Make the adapter resident, ready for requests (evicting the least recently used one
        beyond ``max_loras``); raises EngineError if it cannot load."""
        raise EngineError(f"the {self.name} engine does not serve LoRA fine-tunes")

    async def unload_adapter(self, key: str) -> None:
        """Drop a resident adapter (idempotent; unknown keys are ignored)."""
        return None

    def resident_adapters(self) -> list[str]:
        """Keys of the resident adapters, least recently used first."""
        return []

    @abstractmethod
    async def shutdown(self) -> None:
        """Free the engine's processes and memory."""
