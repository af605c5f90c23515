"""The path every endpoint that calls a model shares (chat completions, messages, generate):
authenticate → gate → read → parse (the family's own parser) → route → resolve fine-tunes → call
the backends (``chat.fallback``) → meter. Every answered request gets one call record, whether
it succeeded, was refused, failed in the gateway, or was left by its caller mid-stream.

A family turns its body into a ``ModelRequest`` (an OpenAI chat body, and for ``/v1/messages``
the caller's own Anthropic body, which an Anthropic backend takes unchanged) and gets back a
``ModelAnswer`` in the backend's shape; a streamed answer may be reshaped piece by piece on its
way to the caller (``Reshape``), inside the metering, so the record counts the caller's bytes."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.keys.store import VerifiedKey
from actors.metering.call_meter import CallMeter, completion_text, estimated_usage, prompt_text, streamed_text
from actors.limits.gate import LimitGate, check_model
from actors.limits.store import Reserved
from actors.metering.record import CallRecord
from actors.routing.table import (
    ENGINE_WIRE,
    FINETUNE_WIRE,
    Backend,
    RoutingTable,
    attempt_order,
    takes_native,
    unsupported,
)
from core.backend import LoraAdapter, UpstreamCall, UpstreamFailure
from core.errors import GatewayError, internal_error
from core.money import Price, cost_units_text, price_for
from finetunes.registry import FineTune
from serve_app.endpoints.chat.fallback import (
    Backends,
    Deadline,
    Framing,
    Outcome,
    complete_chat,
    open_chat_stream,
    past_deadline,
)

logger = logging.getLogger("neuroapi.ingress")

# The live version of fine-tune "ft:NAME" for an account (``FineTuneResolver.resolve``); raises
# GatewayError 404 when it is retired or another account's.
FineTuneLookup = Callable[[str, str], Awaitable[FineTune]]
# Turns one piece of a backend's SSE into the caller's (b"" while it holds it back).
Reshape = Callable[[bytes], bytes]


@dataclass(frozen=True)
class ModelRequest:
    """What a family's parser makes of a body, for the shared call path."""

    model: str
    mode: str | None
    stream: bool
    body: dict[str, Any]  # an OpenAI chat body (``ChatRequest.upstream_body``'s shape)
    wants_usage_in_stream: bool = False
    native: dict[str, Any] | None = None  # the caller's Anthropic body, for Anthropic backends
    # Why only a native Anthropic call can honour the request (e.g. "'top_k' is only supported
    # by Claude models"); every other backend is skipped for it.
    native_only: str | None = None
    native_betas: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelAnswer:
    outcome: Outcome
    body: bytes = b""  # a non-streamed answer: a chat.completion, or Anthropic's message when ``native``
    cost_units: str = ""  # its price, exact decimal text
    events: AsyncIterator[bytes] | None = None  # a stream's SSE, recorded however it ends
    native: bool = False  # the answer is Anthropic's own (the backend took ``ModelRequest.native``)
    headers: Mapping[str, str] = field(default_factory=dict)  # a limited key's x-ratelimit-* values


def _tools_text(body: dict[str, Any]) -> str:
    return json.dumps(body["tools"]) if body.get("tools") else ""


class ModelCalls:
    def __init__(self, table: RoutingTable, backends: Backends, finetunes: FineTuneLookup,
                 record: Callable[[CallRecord], None], prices: Mapping[str, Price], deadline_s: float,
                 rng: random.Random | None = None, gate: Callable[[str], Awaitable[None]] | None = None,
                 limits: LimitGate | None = None):
        """``gate(account_id)`` raises when the account may not call (billing: 402); ``limits``
        applies each key's allow-list, rates and budgets (issue 19)."""
        self._table = table
        self._backends = backends
        self._finetunes = finetunes
        self._record = record  # to the metadata batcher in batches, off the request's path
        self._prices = prices
        self._deadline_s = deadline_s
        self._rng = rng or random.Random()
        self._gate = gate
        self._limits = limits

    async def caller(self, meter: CallMeter, authenticate: Callable[[], Awaitable[VerifiedKey]]) -> VerifiedKey:
        """The verified key, on the meter, and the billing gate passed."""
        verified = await authenticate()
        meter.key_prefix, meter.account_id = verified.prefix, verified.account_id
        if self._gate is not None:
            await self._gate(verified.account_id)
        return verified

    async def answer(self, meter: CallMeter, authenticate: Callable[[], Awaitable[VerifiedKey]],
                     read_body: Callable[[], Awaitable[bytes]], parse: Callable[[bytes], ModelRequest],
                     reshape: Callable[[ModelRequest, bool, str | None], Reshape | None] | None = None,
                     framing: Framing | None = None) -> ModelAnswer:
        """``reshape(request, native, mode)`` gives the per-piece transform of a streamed answer
        (None: as it comes; ``mode``: the one that routed it, None for a named model); ``framing``
        ends a native Anthropic stream (done, or an error event)."""
        outcome = Outcome()
        deadline = Deadline.after(self._deadline_s)
        reserved = None
        try:
            verified = await self.caller(meter, authenticate)
            raw = await read_body()
            meter.request_bytes = len(raw)
            request = parse(raw)
            check_model(verified.limits, request.model, request.mode)
            body = request.body
            order = await self._order(request, verified, meter)
            if self._limits is not None:  # before anything is sent upstream
                reserved = await self._limits.reserve(verified.limits, verified.prefix, verified.account_id,
                                                      meter.request_id, *self._limits.worst_case(body, order))
            headers = reserved.headers.as_headers() if reserved is not None else {}
            call = UpstreamCall(meter.request_id, "", body, request.wants_usage_in_stream, verified.scope,
                                native=request.native, native_betas=request.native_betas)
            if not request.stream:
                completion = await complete_chat(self._backends, order, call, outcome, deadline)
                usage, estimated = completion.usage, completion.usage is None
                if estimated:
                    usage = estimated_usage(prompt_text(body["messages"]), completion_text(completion.body))
                self._answered(meter, outcome)
                record = self._finished(meter.finish(200, len(completion.body), usage, estimated, self._prices),
                                        reserved)
                return ModelAnswer(outcome, completion.body, cost_units_text(record.cost_micro_units),
                                   native=self._native(request, outcome), headers=headers)
            events = await open_chat_stream(self._backends, order, call, outcome, deadline, framing)
        except GatewayError as error:
            self._answered(meter, outcome)
            self._finished(meter.rejected(error, self._prices), reserved)
            if reserved is not None:  # a limited key's every answer says where it stands
                error.headers = {**reserved.headers.as_headers(), **error.headers}
            raise
        except Exception as error:  # our own failure is answered (500) and metered like any other
            logger.error("request %s failed: %s", meter.request_id, type(error).__name__)
            failure = internal_error()
            self._answered(meter, outcome)
            self._finished(meter.rejected(failure, self._prices), reserved)
            raise failure from None
        self._answered(meter, outcome)
        native = self._native(request, outcome)
        transform = reshape(request, native, meter.mode or None) if reshape is not None else None
        return ModelAnswer(outcome, events=self.metered_stream(events, meter, outcome, body["messages"], transform,
                                                               reserved),
                           native=native, headers=headers)

    def _finished(self, record: CallRecord, reserved: Reserved | None) -> CallRecord:
        """The call's record to the batcher, and its real usage against the key's limits."""
        self._record(record)
        if self._limits is not None:
            self._limits.settle(reserved, record.prompt_tokens + record.completion_tokens, record.cost_micro_units)
        return record

    async def count_tokens(self, meter: CallMeter, authenticate: Callable[[], Awaitable[VerifiedKey]],
                           read_body: Callable[[], Awaitable[bytes]],
                           parse: Callable[[bytes], ModelRequest]) -> tuple[int, bool]:
        """(input tokens, estimated) of a request for the backend that would serve it first: the
        provider's own count (Anthropic), the model's tokenizer and chat template (in-house), or,
        for a provider with no count API, the estimate metering uses (4 bytes a token)."""
        deadline = Deadline.after(self._deadline_s)
        verified = await self.caller(meter, authenticate)
        raw = await read_body()
        meter.request_bytes = len(raw)
        request = parse(raw)
        check_model(verified.limits, request.model, request.mode)
        backend = (await self._order(request, verified, meter))[0]
        meter.backend, meter.model = backend.provider, backend.model
        native = request.native is not None and takes_native(backend)
        if not (native or backend.wire == ENGINE_WIRE):
            return estimated_usage(prompt_text(request.body["messages"]) + _tools_text(request.body), "").prompt_tokens, True
        call = UpstreamCall(meter.request_id, backend.model, {} if native else request.body, scope=verified.scope,
                            adapter=backend.finetune, timeout_s=deadline.remaining(),
                            native=request.native if native else None, native_betas=request.native_betas if native else ())
        try:
            async with asyncio.timeout_at(deadline.safety_net()):
                counted = await self._backends.count_tokens(backend, call)
        except TimeoutError:
            raise past_deadline() from None
        if isinstance(counted, UpstreamFailure):
            raise counted.error
        return counted, False

    async def _order(self, request: ModelRequest, verified: VerifiedKey, meter: CallMeter) -> list[Backend]:
        """The backends to try for ``request``, fine-tunes resolved."""
        route = self._table.resolve(request.model, request.mode)
        meter.mode = route.mode or ""
        check = self._check(request)
        order = attempt_order(route, request.body, self._rng, verified.scope, check=check)
        return await self._with_finetunes(order, verified, check)

    @staticmethod
    def _native(request: ModelRequest, outcome: Outcome) -> bool:
        return request.native is not None and outcome.backend is not None and takes_native(outcome.backend)

    def _check(self, request: ModelRequest) -> Callable[[Backend], str | None]:
        """Why a backend cannot serve ``request`` (None: it can)."""
        def check(backend: Backend) -> str | None:
            if request.native is not None and takes_native(backend):
                return None  # Anthropic takes the caller's own Anthropic body
            return request.native_only or unsupported(backend, request.body)
        return check

    async def _with_finetunes(self, order: list[Backend], verified: VerifiedKey,
                              check: Callable[[Backend], str | None]) -> list[Backend]:
        """Fine-tunes in ``order`` resolved to their live version on their base model's replicas.

        One that is retired, another account's, or whose base model cannot honour the request is
        skipped (a mode's other candidates serve); when nothing is left, the caller gets its 404
        or 400."""
        resolved: list[Backend] = []
        missing: GatewayError | None = None
        for backend in order:
            if backend.wire != FINETUNE_WIRE:
                resolved.append(backend)
                continue
            try:
                finetune = await self._finetunes(backend.model, verified.account_id)
                adapter = LoraAdapter(finetune.key, Path(finetune.artifact_path), price_name=backend.model)
                on_base = self._table.with_adapter(backend.model, finetune.base_model, adapter)
                reason = check(on_base)
                if reason is not None:
                    raise GatewayError(400, f"Unsupported parameter: {reason}.", code="unsupported_parameter")
                resolved.append(on_base)
            except GatewayError as error:
                missing = missing or error
        if not resolved and missing is not None:
            raise missing
        return resolved

    def _answered(self, meter: CallMeter, outcome: Outcome) -> None:
        backend = outcome.backend
        if backend is None:
            return
        meter.backend, meter.model = backend.provider, backend.model
        if backend.finetune is not None:  # metered as the fine-tune, at its price or its base model's
            meter.model, meter.finetune = backend.finetune.price_name, backend.finetune.key
            meter.price = price_for(self._prices, backend.model, backend.finetune.price_name)

    async def metered_stream(self, events: AsyncIterator[bytes], meter: CallMeter, outcome: Outcome,
                             messages, reshape: Reshape | None = None,
                             reserved: Reserved | None = None) -> AsyncIterator[bytes]:
        """The caller's SSE body; its record is made however it ends (done, failed, or the
        caller gone mid-stream, when the tokens that reached it are estimated and billed)."""
        relayed: list[bytes] = []  # the backend's pieces (what an estimate reads)
        sent = 0  # the caller's bytes

        def record() -> None:
            usage, estimated = outcome.usage, outcome.usage is None
            if estimated:
                usage = estimated_usage(prompt_text(messages), streamed_text(relayed))
            self._finished(meter.finish(200, sent, usage, estimated, self._prices), reserved)

        recorded = False
        try:
            async for piece in events:
                relayed.append(piece)
                out = reshape(piece) if reshape is not None else piece
                sent += len(out)
                if outcome.finished:  # recorded before the caller has the end: a replica killed
                    record()          # right after it loses no billed call
                    recorded = True
                if out:
                    yield out
        finally:
            await events.aclose()  # the caller left: this cancels the upstream request
            if not recorded:
                record()
