"""``ChatService`` over ``ModelCalls`` (serve_app.endpoints) driven directly: no HTTP, no Ray. Backends
are in process: provider clients on the fake upstreams, and an in-house model that records the
calls it gets. Each answered call leaves exactly one record, priced once."""

from __future__ import annotations

import json

import pytest

from actors.keys.store import VerifiedKey
from actors.metering.call_meter import CallMeter
from actors.routing.table import ENGINE_WIRE, build_routing_table
from config.catalog import Candidate, ModeSpec, Price
from config.settings import load_settings
from core.backend import Completion, Usage
from core.errors import GatewayError, invalid_api_key, model_not_found
from core.money import cost_units_text
from core.scope import UNRESTRICTED
from finetunes.registry import FineTune
from serve_app.endpoints.chat.service import ChatService
from serve_app.endpoints.model_calls import ModelCalls
from tests.support.chat_backends import DirectBackends

BASE = "smollm2-135m-instruct"
KEY = VerifiedKey(prefix="neuro_abcd1234", account_id="acct_1", scope=UNRESTRICTED)
LIVE = FineTune(name="bot", version=2, base_model=BASE, digest="d", artifact_path="/tmp/bot-v2", owner_account=None,
                state="live", deployed_by="test", deployed_at_ms=0, rank=8)
SETTINGS = load_settings(environ={}).model_copy(update={"modes": {
    **load_settings(environ={}).modes,
    "support": ModeSpec(candidates=[Candidate(model="ft:bot", weight=1), Candidate(model="deepseek-chat", weight=0)]),
}})
PRICES = {**SETTINGS.prices, "ft:bot": Price(input=7, output=9)}


class Backends:
    """Providers through their real clients; the in-house model answers itself and keeps the calls."""

    def __init__(self, upstreams):
        self._providers = DirectBackends(upstreams)
        self.in_house_calls = []

    async def complete(self, backend, call):
        if backend.wire != ENGINE_WIRE:
            return await self._providers.complete(backend, call)
        self.in_house_calls.append(call)
        usage = Usage(4, 2).priced(PRICES[call.adapter.price_name])  # what the model server does
        body = json.dumps({"object": "chat.completion", "choices": [{"message": {"content": "ok"}}]}).encode()
        return Completion(body, usage, 1.0)

    def stream(self, backend, call):
        return self._providers.stream(backend, call)


def service(upstreams, finetunes, records) -> tuple[ChatService, Backends]:
    backends = Backends(upstreams)
    table = build_routing_table(SETTINGS, ["deepseek", "anthropic"])
    return ChatService(ModelCalls(table, backends, finetunes, records.append, PRICES, deadline_s=30.0)), backends


async def authenticated():
    return KEY


def body(model: str, **fields):
    async def read():
        return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}).encode()
    return read


async def live(model: str, account_id: str) -> FineTune:
    return LIVE


async def retired(model: str, account_id: str) -> FineTune:
    raise model_not_found(model)


async def test_a_completion_and_its_record_carry_the_same_cost(upstreams):
    records = []
    chat, _ = service(upstreams, live, records)
    answer = await chat.answer(CallMeter.start("req-1", "50"), authenticated, body("deepseek-chat"))
    assert json.loads(answer.body)["object"] == "chat.completion"
    [record] = records
    assert (record.status, record.backend, record.model, record.key_prefix) == (200, "deepseek", "deepseek-chat",
                                                                                KEY.prefix)
    assert record.cost_micro_units > 0 and answer.cost_units == cost_units_text(record.cost_micro_units)


async def test_a_fine_tune_in_a_mode_runs_on_its_base_model_with_its_adapter_at_its_price(upstreams):
    records = []
    chat, backends = service(upstreams, live, records)
    await chat.answer(CallMeter.start("req-2", "50"), authenticated, body("support"))
    [call] = backends.in_house_calls
    assert (call.model, call.adapter.key, str(call.adapter.path)) == (BASE, "bot@v2", "/tmp/bot-v2")
    [record] = records
    assert (record.mode, record.model, record.finetune) == ("support", "ft:bot", "bot@v2")
    assert record.cost_micro_units == 4 * 7 + 2 * 9  # priced once, by the backend, at the fine-tune's price


async def test_a_retired_fine_tune_is_skipped_and_the_modes_next_candidate_serves(upstreams):
    records = []
    chat, backends = service(upstreams, retired, records)
    await chat.answer(CallMeter.start("req-3", "50"), authenticated, body("support"))
    assert backends.in_house_calls == []
    assert [(r.status, r.model) for r in records] == [(200, "deepseek-chat")]


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


async def test_a_fine_tune_has_its_base_models_capabilities(upstreams):
    records = []
    chat, backends = service(upstreams, live, records)
    # Its base (the in-house SmolLM2) has forced tool calls but no auto tools: named alone, a 400
    # naming the field and the fine-tune; in a mode, the next candidate (deepseek-chat) serves.
    with pytest.raises(GatewayError) as refused:
        await chat.answer(CallMeter.start("req-5", "50"), authenticated, body("ft:bot", tools=TOOLS))
    assert (refused.value.status, refused.value.code) == (400, "unsupported_parameter")
    assert "'tools' is not supported by model 'ft:bot'" in refused.value.message
    await chat.answer(CallMeter.start("req-6", "50"), authenticated, body("support", tools=TOOLS))
    assert backends.in_house_calls == [] and [(r.status, r.model) for r in records] == [
        (400, ""), (200, "deepseek-chat")]
    await chat.answer(CallMeter.start("req-7", "50"), authenticated, body("ft:bot", tools=TOOLS, tool_choice="required"))
    assert [call.adapter.key for call in backends.in_house_calls] == ["bot@v2"]


async def test_a_fine_tune_named_alone_and_gone_is_the_callers_404_and_is_recorded(upstreams):
    records = []
    chat, _ = service(upstreams, retired, records)
    with pytest.raises(GatewayError) as error:
        await chat.answer(CallMeter.start("req-4", "50"), authenticated, body("ft:bot"))
    assert (error.value.status, error.value.code) == (404, "model_not_found")
    assert [(r.request_id, r.status, r.response_bytes) for r in records] == [("req-4", 404, len(error.value.rendered()))]


async def test_a_refused_key_is_recorded_without_reading_the_body(upstreams):
    records, read = [], []

    async def refused():
        raise invalid_api_key()

    async def never():
        read.append(True)
        return b"{}"

    chat, _ = service(upstreams, live, records)
    with pytest.raises(GatewayError):
        await chat.answer(CallMeter.start("req-5", "50"), refused, never)
    assert read == []
    assert [(r.status, r.key_prefix, r.account_id) for r in records] == [(401, "", "")]


async def test_a_stream_is_recorded_once_when_it_ends(upstreams):
    records = []
    chat, _ = service(upstreams, live, records)
    answer = await chat.answer(CallMeter.start("req-6", "50"), authenticated, body("deepseek-chat", stream=True))
    received = b"".join([piece async for piece in answer.events])
    assert received.endswith(b"data: [DONE]\n\n")
    assert [(r.request_id, r.status, r.response_bytes) for r in records] == [("req-6", 200, len(received))]


async def test_a_fine_tune_is_skipped_for_what_only_claude_honours_on_v1_messages(upstreams):
    """/v1/messages: a fine-tune is held to the same Claude-only rule as every other non-Claude
    candidate (never served with top_k silently dropped)."""
    from serve_app.endpoints.messages.service import MessagesService

    records = []
    chat, backends = service(upstreams, live, records)
    messages = MessagesService(chat._calls)

    async def anthropic_body():
        return json.dumps({"model": "ft:bot", "max_tokens": 8, "top_k": 5,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()

    with pytest.raises(GatewayError) as refused:
        await messages.answer(CallMeter.start("req-8", "50"), authenticated, anthropic_body, ())
    assert (refused.value.status, refused.value.code) == (400, "unsupported_parameter")
    assert "'top_k'" in refused.value.message and backends.in_house_calls == []
