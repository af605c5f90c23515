"""``POST /v1/embeddings`` as plain Python: authenticate → parse → the one backend that embeds for
the model named (scope first, as chat does) → call it within the request's deadline → write
OpenAI's answer → meter. One call record per call however it ends; a call is priced by the backend
that counted its tokens (the provider's usage, or the in-house tokenizer's), at its model's input
price (completion tokens: 0). No fallback and no mode: another model's vectors would not be
comparable with the ones a caller already stored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from actors.keys.store import VerifiedKey
from actors.limits.gate import LimitGate, check_model
from actors.limits.store import Reserved
from actors.metering.call_meter import CallMeter
from actors.metering.record import CallRecord
from actors.routing.table import Backend, RoutingTable, embedding_backend
from config.catalog import ModelCard
from core.backend import Embeddings, UpstreamCall, UpstreamFailure
from core.errors import GatewayError, internal_error
from core.money import Price, cost_micro_units, cost_units_text
from models.pooling import MAX_REQUEST_TOKENS
from serve_app.endpoints.chat.fallback import Deadline, past_deadline
from serve_app.endpoints.embeddings.schema import EmbeddingRequest, embeddings_answer, parse_embedding_request

logger = logging.getLogger("neuroapi.ingress")


class EmbeddingBackends(Protocol):
    async def embed(self, backend: Backend, call: UpstreamCall) -> Embeddings | UpstreamFailure: ...


@dataclass(frozen=True)
class EmbeddingAnswer:
    body: bytes  # OpenAI's list of embeddings, with usage.cost_units
    cost_units: str  # its price, exact decimal text
    upstream_ms: float
    headers: Mapping[str, str] = field(default_factory=dict)  # a limited key's x-ratelimit-* values


def check_for_model(request: EmbeddingRequest, card: ModelCard, backend: Backend) -> None:
    """What the gateway can refuse before calling: ``dimensions`` on a model that does not shorten
    (OpenAI's words) or above its size, and token arrays past its context or the request's token
    bound. Strings are counted by the backend, which refuses them the same way."""
    if request.dimensions is not None and not backend.in_house:
        if not card.shortens:
            raise GatewayError(400, "This model does not support specifying dimensions.", param="dimensions",
                               code="unsupported_parameter")
        if card.dimensions is not None and request.dimensions > card.dimensions:
            raise GatewayError(400, f"'dimensions' must be at most {card.dimensions} for {backend.model}.",
                               param="dimensions", code="invalid_value")
    arrays = request.token_arrays
    longest = max(map(len, arrays), default=0)
    if card.context_length is not None and longest > card.context_length:
        raise GatewayError(400, f"This model's maximum context length is {card.context_length} tokens, however "
                                f"you requested {longest} tokens in one input. Please reduce your input.",
                           param="input", code="context_length_exceeded")
    total = sum(map(len, arrays))
    if total > MAX_REQUEST_TOKENS:
        raise GatewayError(400, f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request.",
                           param="input", code="max_tokens_per_request")


class EmbeddingService:
    def __init__(self, table: RoutingTable, backends: EmbeddingBackends, record: Callable[[CallRecord], None],
                 prices: Mapping[str, Price], card: Callable[[str], ModelCard], deadline_s: float,
                 gate: Callable[[str], Awaitable[None]] | None = None, limits: LimitGate | None = None):
        """``card(model)``: its catalog card (context, dimensions); ``gate(account_id)`` raises when
        the account may not call (billing: 402)."""
        self._table = table
        self._backends = backends
        self._record = record  # to the metadata batcher in batches, off the request's path
        self._prices = prices
        self._card = card
        self._deadline_s = deadline_s
        self._gate = gate
        self._limits = limits

    async def answer(self, meter: CallMeter, authenticate: Callable[[], Awaitable[VerifiedKey]],
                     read_body: Callable[[], Awaitable[bytes]]) -> EmbeddingAnswer:
        deadline = Deadline.after(self._deadline_s)
        reserved = None
        try:
            verified = await authenticate()
            meter.key_prefix, meter.account_id = verified.prefix, verified.account_id
            if self._gate is not None:
                await self._gate(verified.account_id)
            raw = await read_body()
            meter.request_bytes = len(raw)
            request = parse_embedding_request(raw)
            backend = embedding_backend(self._table, request.model, verified.scope)
            meter.backend, meter.model = backend.provider, backend.model
            check_for_model(request, self._card(backend.model), backend)
            check_model(verified.limits, request.model, None)
            if self._limits is not None:  # the worst case: one token per byte of text, or the token ids
                tokens = sum(len(item.encode()) if isinstance(item, str) else len(item) for item in request.input)
                price = self._limits.price(backend.model)
                reserved = await self._limits.reserve(verified.limits, verified.prefix, verified.account_id,
                                                      meter.request_id, tokens,
                                                      cost_micro_units(price, tokens, 0) if price else 0)
            embeddings = await self._embed(backend, UpstreamCall(
                meter.request_id, backend.model, request.upstream_body(), scope=verified.scope,
                timeout_s=deadline.remaining()), deadline)
            # Priced where the tokens were counted; the record and the answer carry that one cost.
            record = meter.finish(200, 0, embeddings.usage, False, self._prices)
            cost_units = cost_units_text(record.cost_micro_units)
            body = embeddings_answer(embeddings, backend.model, request.encoding_format, cost_units)
            self._finished(replace(record, response_bytes=len(body)), reserved)
            return EmbeddingAnswer(body, cost_units, embeddings.upstream_ms,
                                   reserved.headers.as_headers() if reserved is not None else {})
        except GatewayError as error:
            self._finished(meter.rejected(error, self._prices), reserved)
            raise
        except Exception as error:  # our own failure is answered (500) and metered like any other
            logger.error("embeddings request %s failed: %s", meter.request_id, type(error).__name__)
            failure = internal_error()
            self._finished(meter.rejected(failure, self._prices), reserved)
            raise failure from None

    def _finished(self, record: CallRecord, reserved: Reserved | None) -> None:
        self._record(record)
        if self._limits is not None:
            self._limits.settle(reserved, record.prompt_tokens, record.cost_micro_units)

    async def _embed(self, backend: Backend, call: UpstreamCall, deadline: Deadline) -> Embeddings:
        """The backend's vectors, or its failure raised; bounded here too (a backend that ignores
        ``timeout_s`` or died cannot hold the caller past the deadline)."""
        try:
            async with asyncio.timeout_at(deadline.safety_net()):
                result = await self._backends.embed(backend, call)
        except TimeoutError:
            logger.warning("backend %s gave no embeddings by the deadline", backend.deployment)
            raise past_deadline() from None
        if isinstance(result, UpstreamFailure):
            logger.info("upstream %s/%s failed an embeddings call (%s)", backend.provider, backend.model,
                        result.error.code)
            raise result.error
        return result
