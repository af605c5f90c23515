"""One in-house model on one replica: a validated OpenAI request in, the provider-proxy protocol
out (``Completion`` / ``StreamStart``, SSE bytes, ``StreamEnd``), so the ingress treats an
in-house model exactly like a provider: same fallbacks, metering and pricing.

Plain Python over an ``Engine`` and a tokenizer; ``models.deployment`` is its Ray Serve shell."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any

from config.catalog import InHouseModelSpec, Price
from core.backend import (
    Completion,
    LoraAdapter,
    StreamEnd,
    StreamStart,
    UpstreamCall,
    UpstreamFailure,
    Usage,
    refused_by_scope,
)
from core.errors import GatewayError, upstream_error
from core.money import cost_units_text, price_for
from core.naming import IN_HOUSE_PROVIDER
from models import openai_format as wire
from models.engine import Delta, Engine, EngineError, Sampling

logger = logging.getLogger("neuroapi.models")


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def engine_failure(started: float) -> UpstreamFailure:
    return UpstreamFailure(upstream_error("The in-house model failed while answering."), retriable=True,
                           upstream_ms=_elapsed_ms(started))


class ModelServer:
    def __init__(self, name: str, spec: InHouseModelSpec, engine: Engine, tokenizer: wire.ChatTokenizer,
                 prices: Mapping[str, Price]):
        """``prices``: this model's, and fine-tunes' ("ft:NAME") that differ from it."""
        self.name, self.spec, self.engine = name, spec, engine
        self._tokenizer = tokenizer
        self._prices = dict(prices)
        # Fine-tunes: ``_resident`` decides which adapters this replica holds (Serve's multiplexing
        # LRU in the deployment shell, ``hold_adapters_with``); without one, every call loads.
        self._wanted: dict[str, LoraAdapter] = {}
        self._resident: Callable[[str], Awaitable[Any]] = self.load_adapter

    def hold_adapters_with(self, resident: Callable[[str], Awaitable[Any]]) -> None:
        """``resident(key)`` returns once the adapter is loaded, calling ``load_adapter`` on a miss."""
        self._resident = resident

    async def load_adapter(self, key: str) -> LoraAdapter:
        adapter = self._wanted.pop(key)
        await self.engine.load_adapter(adapter)
        return adapter

    async def _adapter_failure(self, call: UpstreamCall) -> UpstreamFailure | None:
        """The call's adapter loaded on this replica (a no-op once it is resident), or why not."""
        if call.adapter is None:
            return None
        self._wanted[call.adapter.key] = call.adapter
        try:
            await self._resident(call.adapter.key)
        except EngineError as error:
            logger.warning("model %s could not load adapter %s: %s", self.name, call.adapter.key, error)
            return UpstreamFailure(GatewayError(502, "The fine-tune could not be loaded on the in-house model.",
                                                "server_error", "finetune_unavailable"), retriable=False, upstream_ms=0.0)
        finally:
            self._wanted.pop(call.adapter.key, None)
        return None

    def _prepare(self, call: UpstreamCall) -> tuple[list[int], Sampling]:
        """The prompt's token ids and the sampling parameters; raises GatewayError (400)."""
        ids = wire.prompt_token_ids(self._tokenizer, call.body["messages"])
        return ids, wire.sampling_for(call.body, self.name, len(ids), self.spec.max_model_len,
                                      self.spec.default_max_tokens)

    def _priced(self, usage: Usage, adapter: LoraAdapter | None) -> Usage:
        return usage.priced(price_for(self._prices, self.name, adapter.price_name if adapter else ""))

    def _generate(self, ids: list[int], sampling: Sampling, adapter: LoraAdapter | None) -> AsyncIterator[Delta]:
        # Unique per attempt: the engine rejects a request id it already holds.
        return self.engine.generate(uuid.uuid4().hex, ids, sampling, adapter)

    async def complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
        return await self._adapter_failure(call) or await self._complete(call)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
        failure = await self._adapter_failure(call)
        if failure is not None:
            yield failure
            return
        async with aclosing(self._stream(call)) as items:  # closed with us: an early close aborts the engine
            async for item in items:
                yield item

    async def _complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
        started = time.perf_counter()
        refused = refused_by_scope(call, IN_HOUSE_PROVIDER, in_house=True)
        if refused is not None:
            return refused
        try:
            ids, sampling = self._prepare(call)
        except GatewayError as error:
            return UpstreamFailure(error, retriable=False, upstream_ms=0.0)
        header = wire.AnswerHeader.new(call.request_id, self.name, self.engine.name)
        text: list[str] = []
        last = Delta("", 0)
        try:
            async for last in self._generate(ids, sampling, call.adapter):
                text.append(last.text)
        except EngineError as error:
            logger.warning("model %s failed a request: %s", self.name, error)
            return engine_failure(started)
        usage = self._priced(Usage(len(ids), last.completion_tokens), call.adapter)
        body = wire.completion(header, "".join(text), last.finish_reason or "stop", usage,
                               cost_units_text(usage.cost_micro_units or 0))
        return Completion(body, usage, _elapsed_ms(started))

    async def _stream(self, call: UpstreamCall) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
        """The role chunk goes out with the first token, so time to first token is the model's."""
        started = time.perf_counter()
        refused = refused_by_scope(call, IN_HOUSE_PROVIDER, in_house=True)
        if refused is not None:
            yield refused
            return
        try:
            ids, sampling = self._prepare(call)
        except GatewayError as error:
            yield UpstreamFailure(error, retriable=False, upstream_ms=0.0)
            return
        header = wire.AnswerHeader.new(call.request_id, self.name, self.engine.name)
        deltas = self._generate(ids, sampling, call.adapter)
        sent_first, last = False, Delta("", 0)
        try:
            async for last in deltas:
                out = wire.chunk(header, {"content": last.text}) if last.text else b""
                if last.finish_reason:
                    out += wire.chunk(header, {}, last.finish_reason)
                if not sent_first:
                    sent_first = True
                    yield StreamStart(_elapsed_ms(started), wire.chunk(header, {"role": "assistant", "content": ""}) + out)
                elif out:
                    yield out
        except EngineError as error:
            logger.warning("model %s failed a stream: %s", self.name, error)
            if not sent_first:
                yield engine_failure(started)
                return
            yield StreamEnd(self._priced(Usage(len(ids), last.completion_tokens), call.adapter),
                            engine_failure(started).error)
            return
        finally:
            await deltas.aclose()  # the caller left: the engine aborts the request
        if not sent_first:  # an engine that finished without a delta: still a whole answer
            yield StreamStart(_elapsed_ms(started), wire.chunk(header, {"role": "assistant", "content": ""})
                              + wire.chunk(header, {}, "stop"))
        usage = self._priced(Usage(len(ids), last.completion_tokens), call.adapter)
        if call.client_wants_usage:
            yield wire.usage_chunk(header, usage, cost_units_text(usage.cost_micro_units or 0))
        yield StreamEnd(usage)
