"""One in-house model on one replica: a validated OpenAI request in, the provider-proxy protocol
out (``Completion`` / ``StreamStart``, SSE bytes, ``StreamEnd``), so the ingress treats an
in-house model exactly like a provider: same fallbacks, metering and pricing.

Plain Python over an ``Engine`` and a tokenizer; ``models.deployment`` is its Ray Serve shell."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping

from actors.errors import GatewayError
from actors.metering import cost_micro_units, cost_units_text
from actors.providers.base import (
    Completion,
    StreamEnd,
    StreamStart,
    UpstreamCall,
    UpstreamFailure,
    Usage,
    refused_by_scope,
)
from actors.routing import IN_HOUSE_PROVIDER
from config.catalog import InHouseModelSpec, Price
from models import openai_format as wire
from models.engine import Adapter, Delta, Engine, EngineError, Sampling

logger = logging.getLogger("neuroapi.models")


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def engine_failure(started: float) -> UpstreamFailure:
    return UpstreamFailure(GatewayError(502, "The in-house model failed while answering.", "server_error",
                                        "upstream_error"), retriable=True, upstream_ms=_elapsed_ms(started))


class ModelServer:
    def __init__(self, name: str, spec: InHouseModelSpec, engine: Engine, tokenizer: wire.ChatTokenizer,
                 prices: Mapping[str, Price]):
        """``prices``: this model's, and fine-tunes' ("ft:NAME") that differ from it."""
        self.name, self.spec, self.engine = name, spec, engine
        self._tokenizer = tokenizer
        self._prices = dict(prices)

    def _prepare(self, call: UpstreamCall) -> tuple[list[int], Sampling]:
        """The prompt's token ids and the sampling parameters; raises GatewayError (400)."""
        ids = wire.prompt_token_ids(self._tokenizer, call.body["messages"])
        return ids, wire.sampling_for(call.body, self.name, len(ids), self.spec.max_model_len,
                                      self.spec.default_max_tokens)

    def _cost(self, usage: Usage, adapter: Adapter | None) -> str:
        price = (adapter and self._prices.get(adapter.price_name)) or self._prices.get(self.name)
        if price is None:
            return "0"
        return cost_units_text(cost_micro_units(price, usage.prompt_tokens, usage.completion_tokens))

    def _generate(self, ids: list[int], sampling: Sampling, adapter: Adapter | None) -> AsyncIterator[Delta]:
        # Unique per attempt: the engine rejects a request id it already holds.
        return self.engine.generate(uuid.uuid4().hex, ids, sampling, adapter)

    async def complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
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
        usage = Usage(len(ids), last.completion_tokens)
        body = wire.completion(header, "".join(text), last.finish_reason or "stop", usage, self._cost(usage, call.adapter))
        return Completion(body, usage, _elapsed_ms(started))

    async def stream(self, call: UpstreamCall) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
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
            yield StreamEnd(Usage(len(ids), last.completion_tokens), engine_failure(started).error)
            return
        finally:
            await deltas.aclose()  # the caller left: the engine aborts the request
        if not sent_first:  # an engine that finished without a delta: still a whole answer
            yield StreamStart(_elapsed_ms(started), wire.chunk(header, {"role": "assistant", "content": ""})
                              + wire.chunk(header, {}, "stop"))
        usage = Usage(len(ids), last.completion_tokens)
        if call.client_wants_usage:
            yield wire.usage_chunk(header, usage, self._cost(usage, call.adapter))
        yield StreamEnd(usage)
