"""One in-house model on one replica: a validated OpenAI request in, the provider-proxy protocol
out (``Completion`` / ``StreamStart``, SSE bytes, ``StreamEnd``), so the ingress treats an
in-house model exactly like a provider: same fallbacks, metering and pricing.

Plain Python over an ``Engine`` and a tokenizer; ``models.deployment`` is its Ray Serve shell."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
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
from models import tool_calls as tools
from models.engine import Delta, Engine, EngineError, RequestRefused, Sampling, TokenLogprob

logger = logging.getLogger("neuroapi.models")


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def engine_failure(started: float) -> UpstreamFailure:
    return UpstreamFailure(upstream_error("The in-house model failed while answering."), retriable=True,
                           upstream_ms=_elapsed_ms(started))


@dataclass(frozen=True, slots=True)
class _Prepared:
    ids: list[int]  # the prompt's tokens
    sampling: Sampling
    plan: tools.ToolPlan


@dataclass(slots=True)
class _Choice:
    """One of the ``n`` completions as it is generated."""

    text: tools.ChoiceText
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


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

    def _prepare(self, call: UpstreamCall) -> _Prepared:
        """The prompt's token ids, the sampling parameters and what to do with tools; raises
        GatewayError (400) for what this model cannot do, naming the field."""
        body = call.body
        wire.refuse_images(body["messages"])
        plan = tools.tool_plan(body, self.name, self.spec.tool_parser)
        native = self.spec.tool_parser is not None
        ids = wire.prompt_token_ids(self._tokenizer, body["messages"],
                                    body.get("tools") if plan.uses_tools else None,
                                    tools.tool_note(plan), native_tools=native)
        sampling = wire.sampling_for(body, self.name, len(ids), self.spec.max_model_len,
                                     self.spec.default_max_tokens, plan.forced)
        if plan.auto:
            sampling = replace(sampling, keep_special_tokens=True)
            self._choice_text(plan, body)  # the parser exists here (vLLM installed), or a 400 now
        refused = self.engine.unsupported(sampling)
        if refused is not None:
            raise GatewayError(400, refused, code="unsupported_parameter")
        return _Prepared(ids, sampling, plan)

    def _choice_text(self, plan: tools.ToolPlan, body: dict[str, Any]) -> tools.ChoiceText:
        if plan.forced is not None:
            return tools.ForcedCallText(plan.forced)
        if plan.auto:
            try:
                return tools.ParsedToolText(self.spec.tool_parser or "", self._tokenizer, body)
            except (ImportError, KeyError):
                raise GatewayError(400, f"The model '{self.name}' cannot parse tool calls here (tool "
                                        f"parser '{self.spec.tool_parser}' unavailable); send tool_choice "
                                        "'required' or a named function.", param="tool_choice") from None
        return tools.ChoiceText()

    def _choices(self, prepared: _Prepared, body: dict[str, Any]) -> list[_Choice]:
        return [_Choice(self._choice_text(prepared.plan, body)) for _ in range(prepared.sampling.n)]

    def _priced(self, usage: Usage, adapter: LoraAdapter | None) -> Usage:
        return usage.priced(price_for(self._prices, self.name, adapter.price_name if adapter else ""))

    def _generate(self, ids: list[int], sampling: Sampling, adapter: LoraAdapter | None) -> AsyncIterator[Delta]:
        # Unique per attempt: the engine rejects a request id it already holds.
        return self.engine.generate(uuid.uuid4().hex, ids, sampling, adapter)

    async def complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
        return await self._adapter_failure(call) or await self._complete(call)

    async def count_tokens(self, call: UpstreamCall) -> int | UpstreamFailure:
        """The prompt's tokens as this model would read them (chat template and tools included)."""
        refused = refused_by_scope(call, IN_HOUSE_PROVIDER, in_house=True)
        if refused is not None:
            return refused
        try:
            return len(self._prepare(call).ids)
        except GatewayError as error:
            return UpstreamFailure(error, retriable=False, upstream_ms=0.0)

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
            prepared = self._prepare(call)
            choices = self._choices(prepared, call.body)
        except GatewayError as error:
            return UpstreamFailure(error, retriable=False, upstream_ms=0.0)
        header = wire.AnswerHeader.new(call.request_id, self.name, self.engine.name)
        try:
            async for delta in self._generate(prepared.ids, prepared.sampling, call.adapter):
                choice = choices[delta.index]
                choice.text.text += delta.text
                choice.tokens = delta.completion_tokens
                choice.logprobs.extend(delta.logprobs)
                choice.finish_reason = delta.finish_reason or choice.finish_reason
        except RequestRefused as error:
            return UpstreamFailure(GatewayError(400, str(error), param="response_format"), retriable=False,
                                   upstream_ms=_elapsed_ms(started))
        except EngineError as error:
            logger.warning("model %s failed a request: %s", self.name, error)
            return engine_failure(started)
        usage = self._priced(Usage(len(prepared.ids), sum(c.tokens for c in choices)), call.adapter)
        wants_logprobs = prepared.sampling.logprobs is not None
        answer = [wire.choice(index, c.text.message(), c.text.finish_reason(c.finish_reason or "stop"),
                              tuple(c.logprobs) if wants_logprobs else None)
                  for index, c in enumerate(choices)]
        body = wire.completion(header, answer, usage, cost_units_text(usage.cost_micro_units or 0))
        return Completion(body, usage, _elapsed_ms(started))

    async def _stream(self, call: UpstreamCall) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
        """The role chunk goes out with the first token, so time to first token is the model's."""
        started = time.perf_counter()
        refused = refused_by_scope(call, IN_HOUSE_PROVIDER, in_house=True)
        if refused is not None:
            yield refused
            return
        try:
            prepared = self._prepare(call)
            choices = self._choices(prepared, call.body)
        except GatewayError as error:
            yield UpstreamFailure(error, retriable=False, upstream_ms=0.0)
            return
        header = wire.AnswerHeader.new(call.request_id, self.name, self.engine.name)
        roles = b"".join(wire.chunk(header, {"role": "assistant", "content": ""}, index=index)
                         for index in range(len(choices)))
        deltas = self._generate(prepared.ids, prepared.sampling, call.adapter)
        sent_first = False

        def usage() -> Usage:
            return self._priced(Usage(len(prepared.ids), sum(c.tokens for c in choices)), call.adapter)

        try:
            async for delta in deltas:
                out = self._chunks(header, choices, delta)
                if not sent_first:
                    sent_first = True
                    yield StreamStart(_elapsed_ms(started), roles + out)
                elif out:
                    yield out
        except EngineError as error:
            if isinstance(error, RequestRefused) and not sent_first:
                yield UpstreamFailure(GatewayError(400, str(error), param="response_format"), retriable=False,
                                      upstream_ms=_elapsed_ms(started))
                return
            logger.warning("model %s failed a stream: %s", self.name, error)
            if not sent_first:
                yield engine_failure(started)
                return
            yield StreamEnd(usage(), engine_failure(started).error)
            return
        finally:
            await deltas.aclose()  # the caller left: the engine aborts the request
        # A choice the engine ended without a finish reason (or without any delta) still ends.
        rest = b"".join(self._finish(header, choices, index, "stop")
                        for index, choice in enumerate(choices) if choice.finish_reason is None)
        if not sent_first:
            yield StreamStart(_elapsed_ms(started), roles + rest)
        elif rest:
            yield rest
        if call.client_wants_usage:
            priced = usage()
            yield wire.usage_chunk(header, priced, cost_units_text(priced.cost_micro_units or 0))
        yield StreamEnd(usage())

    def _chunks(self, header: wire.AnswerHeader, choices: list[_Choice], delta: Delta) -> bytes:
        """The chunks for one engine delta: its text as content or tool-call fragments (with its
        tokens' logprobs), and the choice's end when it finished."""
        choice = choices[delta.index]
        choice.tokens = delta.completion_tokens
        if isinstance(choice.text, tools.ParsedToolText):
            fields = choice.text.feed(delta.text, delta.token_ids)
        else:
            fields = choice.text.feed(delta.text)
        out = b""
        if fields is not None or delta.logprobs:
            out = wire.chunk(header, fields or {}, index=delta.index, logprobs=delta.logprobs)
        if delta.finish_reason:
            out += self._finish(header, choices, delta.index, delta.finish_reason)
        return out

    def _finish(self, header: wire.AnswerHeader, choices: list[_Choice], index: int, reason: str) -> bytes:
        choice = choices[index]
        choice.finish_reason = reason
        last = choice.text.end()
        out = wire.chunk(header, last, index=index) if last is not None else b""
        return out + wire.chunk(header, {}, choice.text.finish_reason(reason), index=index)
