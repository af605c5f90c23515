"""What crosses between the ingress and a backend (a provider proxy or an in-house model).

The ingress sends an ``UpstreamCall`` (an already validated OpenAI-style body). A backend answers
a non-streamed call with a ``Completion`` or an ``UpstreamFailure``; a streamed call yields
``StreamStart`` (or ``UpstreamFailure``), then ``bytes`` (our SSE, batched per network read),
then one ``StreamEnd``. ``retriable`` tells the ingress whether the next candidate may try."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.errors import GatewayError, scope_forbids
from core.money import Price, cost_micro_units
from core.scope import UNRESTRICTED, Scope


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """A LoRA fine-tune to apply to one request: ``key`` names one version (e.g. "support-bot@v3").

    A key is the adapter's identity: an engine that has it resident does not read ``path`` again,
    so a new version of the weights needs a new key."""

    key: str
    path: Path
    price_name: str = ""  # the catalog name its calls are priced under ("ft:NAME"; else the base's price)


@dataclass(frozen=True, slots=True, repr=False)
class UpstreamCall:
    request_id: str
    model: str  # the concrete model this provider serves
    body: dict[str, Any]  # the caller's validated OpenAI-style request
    client_wants_usage: bool = False  # stream_options.include_usage from the caller
    scope: Scope = UNRESTRICTED  # the account's: a proxy the scope forbids refuses before connecting
    adapter: LoraAdapter | None = None  # a fine-tune to apply (in-house models only)
    # Seconds left of the request's deadline when this attempt starts (relative: clocks differ
    # between machines); None = no deadline. The proxy stops the attempt when it passes.
    timeout_s: float | None = None
    # Another candidate follows: a non-streamed attempt then gets only the provider's
    # first-byte bound, so the fallback still has time. The last one may use the whole deadline.
    more_candidates: bool = False
    # The caller's own Anthropic Messages body (``POST /v1/messages``): an Anthropic backend sends
    # it unchanged and answers in Anthropic's shape; every other backend gets ``body``. Set
    # only on attempts that go to Anthropic, so it never crosses Ray twice.
    native: dict[str, Any] | None = None
    native_betas: tuple[str, ...] = ()  # the caller's ``anthropic-beta`` features that pass through

    def __repr__(self) -> str:  # the body is the prompt: never in a log line or a traceback
        return f"UpstreamCall(request_id={self.request_id!r}, model={self.model!r})"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as OpenAI reports them: ``prompt_tokens`` includes the prompt-cache reads
    (``cached_tokens``) and writes (``cache_write_tokens``, Anthropic's), ``completion_tokens``
    includes ``reasoning_tokens``. A detail is None when the backend did not report it."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    # Priced once, by the backend that measured the usage (None: it knows no price); the call's
    # record carries this, so the answer's usage.cost_units and the bill agree by construction.
    cost_micro_units: int | None = field(default=None, compare=False)

    def priced(self, price: Price | None) -> Usage:
        if price is None:
            return self
        return replace(self, cost_micro_units=cost_micro_units(
            price, self.prompt_tokens, self.completion_tokens, self.cached_tokens or 0, self.cache_write_tokens or 0))

    def as_openai(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        prompt_details = {name: count for name, count in (("cached_tokens", self.cached_tokens),
                                                          ("cache_write_tokens", self.cache_write_tokens))
                          if count is not None}
        if prompt_details:
            usage["prompt_tokens_details"] = prompt_details
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


@dataclass(frozen=True, slots=True, repr=False)
class Completion:
    body: bytes  # an OpenAI chat.completion, JSON
    usage: Usage | None
    upstream_ms: float

    def __repr__(self) -> str:  # the body is the completion text
        return f"Completion(usage={self.usage!r}, upstream_ms={self.upstream_ms:.2f})"


@dataclass(frozen=True, slots=True, repr=False)
class Embeddings:
    """A backend's answer to an embeddings call (``POST /v1/embeddings``): one vector per input,
    in input order, as float32 little-endian bytes (OpenAI's base64 payload, decoded). The ingress
    writes the caller's JSON from them (floats or base64), so no backend formats a float."""

    vectors: bytes  # count * dimensions float32 values, little-endian, row after row
    count: int
    dimensions: int
    usage: Usage  # prompt_tokens = every input's tokens; priced where it was measured
    upstream_ms: float

    def __repr__(self) -> str:  # vectors are derived from the caller's text: never in a log line
        return f"Embeddings(count={self.count}, dimensions={self.dimensions}, usage={self.usage!r})"


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    error: GatewayError
    retriable: bool
    upstream_ms: float


@dataclass(frozen=True, slots=True)
class StreamStart:
    upstream_ms: float  # until the first byte of the answer
    first: bytes  # the first SSE events, already in OpenAI's chunk shape


@dataclass(frozen=True, slots=True)
class StreamEnd:
    usage: Usage | None
    error: GatewayError | None = None  # set when the upstream failed after the first byte


def refused_by_scope(call: UpstreamCall, provider: str, in_house: bool) -> UpstreamFailure | None:
    """A backend's own check of the call's scope, before it connects or generates anything."""
    if call.scope.allows(provider, in_house):
        return None
    return UpstreamFailure(scope_forbids(call.scope.rule()), retriable=False, upstream_ms=0.0)
