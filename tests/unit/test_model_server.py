"""ModelServer: an in-house model speaks the provider-proxy protocol (Completion / StreamStart,
bytes, StreamEnd), over a scripted engine and a word tokenizer."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from config.catalog import Price
from core.backend import Completion, StreamEnd, StreamStart, UpstreamCall, UpstreamFailure, Usage
from core.scope import UNRESTRICTED, Scope
from models.engine import Delta, Engine
from models.model_server import ModelServer
from tests.support.scripted_engine import HELLO, SPEC, ScriptedEngine, WordTokenizer

PRICE = Price(input=10000, output=10000)  # 0.01 cost_units per token


def call(content="Hi", wants_usage=False, scope=UNRESTRICTED, **fields) -> UpstreamCall:
    body = {"model": "my-model", "messages": [{"role": "user", "content": content}], **fields}
    return UpstreamCall("req-1", "my-model", body, wants_usage, scope)


def server(engine: Engine, priced: bool = True) -> tuple[ModelServer, WordTokenizer]:
    tokenizer = WordTokenizer()
    return ModelServer("my-model", SPEC, engine, tokenizer, {"my-model": PRICE} if priced else {}), tokenizer


def events(data: bytes) -> list[dict]:
    parts = data.split(b"\n\n")
    assert parts[-1] == b""
    return [json.loads(part.removeprefix(b"data: "), parse_float=Decimal) for part in parts[:-1]]


async def collect(model: ModelServer, upstream_call: UpstreamCall) -> list:
    return [item async for item in model.stream(upstream_call)]


# Non-streamed

async def test_complete_answers_with_the_joined_text_exact_usage_and_cost():
    engine = ScriptedEngine(HELLO)
    model, tokenizer = server(engine)
    result = await model.complete(call("Hi", temperature=0.3, stop="END"))
    assert isinstance(result, Completion)
    # "<user> Hi <assistant>": 3 prompt tokens; 3 completion tokens; 6 * 0.01 cost_units.
    assert result.usage == Usage(3, 3)
    body = json.loads(result.body, parse_float=Decimal)
    assert (body["object"], body["id"], body["model"], body["system_fingerprint"]) == (
        "chat.completion", "chatcmpl-req-1", "my-model", "scripted")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                             "cost_units": Decimal("0.06")}
    [(_, ids, sampling)] = engine.calls
    assert ids == tokenizer("<user> Hi <assistant>", add_special_tokens=False)["input_ids"]
    assert (sampling.max_tokens, sampling.temperature, sampling.stop) == (8, 0.3, ("END",))


async def test_a_model_without_a_price_is_metered_at_zero():
    model, _ = server(ScriptedEngine(HELLO), priced=False)
    body = json.loads((await model.complete(call())).body, parse_float=Decimal)
    assert body["usage"]["cost_units"] == 0


async def test_every_attempt_gets_its_own_engine_request_id():
    engine = ScriptedEngine(HELLO)
    model, _ = server(engine)
    await model.complete(call())
    await model.complete(call())
    assert engine.calls[0][0] != engine.calls[1][0]  # the engine rejects an id it already holds


# Streamed

async def test_stream_sends_role_and_first_token_together_then_tokens_usage_and_end():
    model, _ = server(ScriptedEngine(HELLO))
    items = await collect(model, call(wants_usage=True))
    assert isinstance(items[0], StreamStart)
    assert [e["choices"][0]["delta"] for e in events(items[0].first)] == [
        {"role": "assistant", "content": ""}, {"content": "Hel"}]
    assert all(isinstance(item, bytes) for item in items[1:-1])
    chunks = [e for item in items[1:-1] for e in events(item)]
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [{"content": "lo"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                                   "cost_units": Decimal("0.06")}
    assert all(c["id"] == "chatcmpl-req-1" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert items[-1] == StreamEnd(Usage(3, 3))


async def test_stream_without_include_usage_has_no_usage_chunk():
    model, _ = server(ScriptedEngine([Delta("Hel", 1), Delta("lo", 2, "stop")]))
    items = await collect(model, call(wants_usage=False))
    chunks = [e for item in items[1:-1] for e in events(item)]
    assert not any("usage" in c for c in chunks)
    # The last delta carries text and the reason: both go out, content first.
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ({"content": "lo"}, None), ({}, "stop")]
    assert items[-1] == StreamEnd(Usage(3, 2))


async def test_an_engine_that_yields_nothing_still_streams_a_whole_answer():
    model, _ = server(ScriptedEngine([]))
    items = await collect(model, call())
    assert isinstance(items[0], StreamStart)
    assert [e["choices"][0]["finish_reason"] for e in events(items[0].first)] == [None, "stop"]
    assert items[-1] == StreamEnd(Usage(3, 0))


# Refusals and failures

SECRET = "zebra " * 70  # 70 words: over the 64-token context


@pytest.mark.parametrize("fields", [{}, {"max_tokens": 62}])
async def test_context_overflow_is_a_400_before_the_engine_is_called(fields):
    content = SECRET if not fields else "Hi"
    engine = ScriptedEngine(HELLO)
    model, _ = server(engine)
    results = [await model.complete(call(content, **fields)), *await collect(model, call(content, **fields))]
    assert len(results) == 2  # the stream is the failure alone
    for result in results:
        assert isinstance(result, UpstreamFailure)
        assert (result.error.status, result.error.code, result.retriable) == (400, "context_length_exceeded", False)
        assert "64 tokens" in result.error.message
        assert "zebra" not in result.error.message
    assert engine.calls == []


async def test_a_scope_that_excludes_in_house_models_is_refused_before_the_engine():
    engine = ScriptedEngine(HELLO)
    model, _ = server(engine)
    scope = Scope(in_house_only=False, excluded_providers=frozenset({"inhouse"}))
    results = [await model.complete(call(scope=scope)), *await collect(model, call(scope=scope))]
    assert len(results) == 2
    for result in results:
        assert isinstance(result, UpstreamFailure)
        assert (result.error.status, result.error.code, result.retriable) == (403, "scope_forbids", False)
    assert engine.calls == []
    # An account pinned to in-house models is exactly who may use it.
    assert isinstance(await model.complete(call(scope=Scope(in_house_only=True))), Completion)


async def test_an_engine_failure_before_any_token_lets_the_next_candidate_try():
    engine = ScriptedEngine(HELLO, fail_after=0)
    model, _ = server(engine)
    results = [await model.complete(call()), *await collect(model, call())]
    assert len(results) == 2
    for result in results:
        assert isinstance(result, UpstreamFailure)
        assert (result.error.status, result.error.code, result.retriable) == (502, "upstream_error", True)


async def test_an_engine_failure_mid_completion_fails_the_whole_non_streamed_answer():
    model, _ = server(ScriptedEngine(HELLO, fail_after=2))
    result = await model.complete(call())
    assert isinstance(result, UpstreamFailure) and result.error.status == 502


async def test_an_engine_failure_after_the_first_token_ends_the_stream_with_the_error():
    model, _ = server(ScriptedEngine(HELLO, fail_after=1))
    items = await collect(model, call(wants_usage=True))
    assert isinstance(items[0], StreamStart)
    assert len(items) == 2  # no usage chunk for a failed answer
    end = items[-1]
    assert isinstance(end, StreamEnd)
    assert end.usage == Usage(3, 1)  # what was generated is still metered
    assert end.error is not None and end.error.status == 502


async def test_closing_the_stream_early_aborts_the_engine_request():
    engine = ScriptedEngine([Delta(str(n), n) for n in range(1, 9)])
    model, _ = server(engine)
    stream = model.stream(call())
    assert isinstance(await anext(stream), StreamStart)
    await stream.aclose()
    assert (engine.aborted, engine.finished, engine.yielded) == (1, 0, 1)
