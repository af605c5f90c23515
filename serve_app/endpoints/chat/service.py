"""``POST /v1/chat/completions`` as plain Python: authenticate → parse → route → resolve fine-tunes
→ call the backends (``fallback``) → meter. Every answered request gets one call record, whether
it succeeded, was refused, failed in the gateway, or was left by its caller mid-stream."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from actors.keys.store import VerifiedKey
from actors.metering.call_meter import CallMeter, completion_text, estimated_usage, prompt_text, streamed_text
from actors.metering.record import CallRecord
from actors.routing.table import FINETUNE_WIRE, Backend, RoutingTable, attempt_order, unsupported
from core.backend import LoraAdapter, UpstreamCall
from core.errors import GatewayError, internal_error
from core.money import Price, cost_units_text, price_for
from finetunes.registry import FineTune
from serve_app.endpoints.chat.fallback import Backends, Deadline, Outcome, complete_chat, open_chat_stream
from serve_app.endpoints.chat.schema import parse_chat_request

logger = logging.getLogger("neuroapi.ingress")

# The live version of fine-tune "ft:NAME" for an account (``FineTuneResolver.resolve``); raises
# GatewayError 404 when it is retired or another account's.
FineTuneLookup = Callable[[str, str], Awaitable[FineTune]]


@dataclass(frozen=True)
class ChatAnswer:
    outcome: Outcome
    body: bytes = b""  # a non-streamed chat.completion
    cost_units: str = ""  # its price, exact decimal text
    events: AsyncIterator[bytes] | None = None  # a stream's SSE, recorded however it ends


class ChatService:
    def __init__(self, table: RoutingTable, backends: Backends, finetunes: FineTuneLookup,
                 record: Callable[[CallRecord], None], prices: Mapping[str, Price], deadline_s: float,
                 rng: random.Random | None = None, gate: Callable[[str], Awaitable[None]] | None = None):
        """``gate(account_id)`` raises when the account may not call (billing: 402)."""
        self._table = table
        self._backends = backends
        self._finetunes = finetunes
        self._record = record  # to the metadata batcher in batches, off the request's path
        self._prices = prices
        self._deadline_s = deadline_s
        self._rng = rng or random.Random()
        self._gate = gate

    async def answer(self, meter: CallMeter, authenticate: Callable[[], Awaitable[VerifiedKey]],
                     read_body: Callable[[], Awaitable[bytes]]) -> ChatAnswer:
        outcome = Outcome()
        deadline = Deadline.after(self._deadline_s)
        try:
            verified = await authenticate()
            meter.key_prefix, meter.account_id = verified.prefix, verified.account_id
            if self._gate is not None:
                await self._gate(verified.account_id)
            raw = await read_body()
            meter.request_bytes = len(raw)
            chat = parse_chat_request(raw)
            route = self._table.resolve(chat.model, chat.mode)
            meter.mode = route.mode or ""
            body = chat.upstream_body()
            order = await self._with_finetunes(attempt_order(route, body, self._rng, verified.scope), verified, body)
            call = UpstreamCall(meter.request_id, "", body, chat.wants_usage_in_stream, verified.scope)
            if not chat.stream:
                completion = await complete_chat(self._backends, order, call, outcome, deadline)
                usage, estimated = completion.usage, completion.usage is None
                if estimated:
                    usage = estimated_usage(prompt_text(body["messages"]), completion_text(completion.body))
                self._answered(meter, outcome)
                record = meter.finish(200, len(completion.body), usage, estimated, self._prices)
                self._record(record)
                return ChatAnswer(outcome, completion.body, cost_units_text(record.cost_micro_units))
            events = await open_chat_stream(self._backends, order, call, outcome, deadline)
        except GatewayError as error:
            self._answered(meter, outcome)
            self._record(meter.rejected(error, self._prices))
            raise
        except Exception as error:  # our own failure is answered (500) and metered like any other
            logger.error("chat request %s failed: %s", meter.request_id, type(error).__name__)
            failure = internal_error()
            self._answered(meter, outcome)
            self._record(meter.rejected(failure, self._prices))
            raise failure from None
        self._answered(meter, outcome)
        return ChatAnswer(outcome, events=self.metered_stream(events, meter, outcome, body["messages"]))

    async def _with_finetunes(self, order: list[Backend], verified: VerifiedKey, body: dict) -> list[Backend]:
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
                reason = unsupported(on_base, body)
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
                             messages) -> AsyncIterator[bytes]:
        """The caller's SSE body; its record is made however it ends (done, failed, or the
        caller gone mid-stream, when the tokens that reached it are estimated and billed)."""
        sent: list[bytes] = []

        def record() -> None:
            usage, estimated = outcome.usage, outcome.usage is None
            if estimated:
                usage = estimated_usage(prompt_text(messages), streamed_text(sent))
            self._record(meter.finish(200, sum(map(len, sent)), usage, estimated, self._prices))

        recorded = False
        try:
            async for piece in events:
                sent.append(piece)
                if outcome.finished:  # recorded before the caller has the end: a replica killed
                    record()          # right after it loses no billed call
                    recorded = True
                yield piece
        finally:
            await events.aclose()  # the caller left: this cancels the upstream request
            if not recorded:
                record()
