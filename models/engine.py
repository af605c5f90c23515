"""The one interface every in-house inference engine offers (vLLM on GPU or CPU, transformers).

The model deployment (``models.deployment``) owns the tokenizer and the chat template, so an
engine sees token ids in and streams text deltas out; everything about OpenAI's wire format
stays in ``models.openai_format``. An engine counts what it did (``EngineStats``) so a test or
an operator can see that a request the caller abandoned was really aborted in the engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path


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


@dataclass(frozen=True, slots=True)
class Delta:
    """New text since the previous delta, and the completion's token count so far."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None  # "stop" or "length" on the last delta


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
    extra: dict = field(default_factory=dict)  # passed to the engine as is (engine_kwargs)


class EngineError(RuntimeError):
    """The engine failed a request or is unhealthy; the message holds no prompt text."""


class Engine(ABC):
    """One model loaded on this replica."""

    name: str  # "vllm-gpu", "vllm-cpu" or "transformers": what /v1/models reports

    @abstractmethod
    async def start(self) -> None:
        """Load the weights; raises EngineError if the model cannot run here."""

    @abstractmethod
    def generate(self, request_id: str, prompt_token_ids: list[int], sampling: Sampling) -> AsyncIterator[Delta]:
        """Stream the completion. Closing the iterator early aborts the request in the engine."""

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request now (idempotent; unknown ids are ignored)."""

    @abstractmethod
    async def check_health(self) -> None:
        """Raise EngineError if the engine can no longer serve."""

    @abstractmethod
    def stats(self) -> EngineStats: ...

    @abstractmethod
    async def shutdown(self) -> None:
        """Free the engine's processes and memory."""
