"""The OpenAI and DeepSeek adapters carry the whole Chat Completions API (issue 15): what they
send upstream, what they refuse by name, and that every real answer shape reaches the caller
unchanged with its usage read. No Ray: real provider clients against the fake providers."""

import json
from decimal import Decimal

import pytest

from actors.providers import ADAPTERS
from actors.providers.adapter import MalformedAnswer
from actors.providers.client import ProviderClient
from actors.providers.deepseek_api import DeepSeekAdapter
from actors.providers.openai_api import check_chunk, check_completion
from config.catalog import Price
from config.settings import load_settings
from core.backend import Completion, StreamEnd, StreamStart, UpstreamCall, Usage
from core.sse import SSEDecoder
from tests.support.provider_clients import MODELS, client_for, collect
from tests.support.upstreams import CREDENTIALS, Behaviour

TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}
# An assistant turn as NeuroAPI answered it (Anthropic's thinking included), echoed back by a caller.
ECHOED_TURN = {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning_content": "hmm",
               "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig-1"}]}
TOOL_LOOP = [
    {"role": "developer", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "what time", "cache_control": {"type": "ephemeral"}}]},
    ECHOED_TURN,
    {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
]


def upstream_call(provider: str, model: str | None = None, wants_usage: bool = False, **body) -> UpstreamCall:
    body.setdefault("messages", [{"role": "user", "content": "hello world"}])
    return UpstreamCall("req-test", model or MODELS[provider], body, wants_usage)


def sent_body(provider: str, stream: bool = False, **body) -> dict:
    settings = load_settings(environ={})
    adapter = ADAPTERS[provider](settings.providers[provider], "sk-x")
    return adapter.request(upstream_call(provider, **body), stream=stream)[2]


def streamed_chunks(items: list) -> list[dict]:
    raw = b"".join(i.first if isinstance(i, StreamStart) else i for i in items if isinstance(i, (bytes, StreamStart)))
    return [json.loads(e.data) for e in SSEDecoder().feed(raw)]


# -- OpenAI: what is sent ------------------------------------------------------------------
def test_openai_passes_the_whole_api_through_and_never_lets_openai_store_the_completion():
    whole = {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False,
             "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "object"}}},
             "reasoning_effort": "low", "logprobs": True, "top_logprobs": 3, "n": 2, "logit_bias": {"50256": -100},
             "metadata": {"team": "a"}, "service_tier": "flex", "seed": 7, "user": "u1"}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
    sent = sent_body("openai", messages=[{"role": "user", "content": [image]}], **whole)
    assert {k: sent[k] for k in whole} == whole
    assert sent["messages"][0]["content"] == [image]
    assert sent["store"] is False


def test_openai_gets_neither_neuroapis_assistant_fields_nor_cache_control():
    sent = sent_body("openai", messages=TOOL_LOOP)
    assistant = sent["messages"][2]
    assert assistant == {"role": "assistant", "content": None, "tool_calls": [CALL]}
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "what time"}]
    assert sent["messages"][0]["role"] == "developer" and sent["messages"][3]["tool_call_id"] == "call_1"
    assert TOOL_LOOP[2]["reasoning_content"] == "hmm"  # the caller's body is not changed in place


async def test_an_echoed_tool_loop_is_accepted_by_openai(upstreams):
    # The fake rejects unknown message fields as OpenAI does: this passes only because they were removed.
    result = await client_for(upstreams, "openai").complete(upstream_call("openai", messages=TOOL_LOOP, tools=[TOOL]))
    assert json.loads(result.body)["choices"][0]["message"]["content"] == "Echo: 12:00 "
    assert upstreams.requests[-1].body["store"] is False


# -- OpenAI: what comes back ---------------------------------------------------------------
FULL_COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": None, "refusal": None, "annotations": [],
                                 "tool_calls": [CALL, dict(CALL, id="call_2")]},
         "logprobs": None, "finish_reason": "tool_calls"},
        {"index": 1, "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
         "logprobs": {"content": [{"token": "I", "logprob": -0.1, "bytes": [73], "top_logprobs": []}],
                      "refusal": None}, "finish_reason": "stop"},
    ],
    "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49,
              "prompt_tokens_details": {"cached_tokens": 32, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 5, "audio_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_1",
}


async def test_every_real_answer_shape_passes_through_unchanged_but_priced(upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(raw=json.dumps(FULL_COMPLETION).encode()))
    settings = load_settings(environ={"NEUROAPI_OPENAI_BASE_URL": upstreams.base_urls()["openai"]})
    client = ProviderClient(ADAPTERS["openai"](settings.providers["openai"], CREDENTIALS["openai"]),
                            {"gpt-4o-mini": Price(input=1_000_000, output=1_000_000)})
    result = await client.complete(upstream_call("openai"))
    assert isinstance(result, Completion)
    assert result.usage == Usage(40, 9, cached_tokens=32, reasoning_tokens=5)
    answer = json.loads(result.body, parse_float=Decimal)
    assert answer["usage"].pop("cost_units") is not None
    assert answer == json.loads(json.dumps(FULL_COMPLETION), parse_float=Decimal)


async def test_streamed_parallel_tool_calls_arrive_whole_in_order_with_usage(upstreams):
    calls = [("get_time", '{"tz": "Europe/Paris"}'), ("get_weather", '{"city": "Paris", "days": [1, 2, 3]}')]
    upstreams.script("gpt-4o-mini", Behaviour(tool_calls=calls, fragment=2, cached_tokens=6, reasoning="a b"))
    items = await collect(client_for(upstreams, "openai"), upstream_call("openai", tools=[TOOL]))
    assert isinstance(items[-1], StreamEnd) and items[-1].error is None
    # The fake counts a token per 4 characters of arguments (22 and 36 here) and per reasoning word.
    assert items[-1].usage == Usage(2 + 6, 6 + 9 + 2, cached_tokens=6, reasoning_tokens=2)
    chunks = streamed_chunks(items)
    rebuilt: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for chunk in chunks:
        for fragment in chunk["choices"][0]["delta"].get("tool_calls") or []:
            rebuilt.setdefault(fragment["index"], []).append(fragment["function"].get("arguments", ""))
            names.setdefault(fragment["index"], fragment["function"].get("name"))
    assert [(names[i], "".join(rebuilt[i])) for i in sorted(rebuilt)] == calls
    assert max(len(piece) for pieces in rebuilt.values() for piece in pieces) == 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
async def test_deepseek_keeps_one_tool_call_when_parallel_calls_are_off(upstreams, stream):
    # DeepSeek has no parallel_tool_calls switch (LangChain's structured output sends false): the
    # adapter passes only the first call on, and never sends the field.
    calls = [("get_time", '{"tz": "Europe/Paris"}'), ("get_weather", '{"city": "Paris"}')]
    upstreams.script("deepseek-chat", Behaviour(tool_calls=calls, fragment=3))
    call = upstream_call("deepseek", tools=[TOOL], parallel_tool_calls=False, stream=stream)
    client = client_for(upstreams, "deepseek")
    if stream:
        chunks = streamed_chunks(await collect(client, call))
        fragments = [f for c in chunks if c["choices"] for f in c["choices"][0]["delta"].get("tool_calls") or []]
        assert {f["index"] for f in fragments} == {0}
        assert "".join(f["function"].get("arguments", "") for f in fragments) == calls[0][1]
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    else:
        answer = json.loads((await client.complete(call)).body)
        assert [(c["function"]["name"], c["function"]["arguments"])
                for c in answer["choices"][0]["message"]["tool_calls"]] == [calls[0]]
    assert "parallel_tool_calls" not in upstreams.requests[-1].body  # so the fake sent both calls


VALID_CHUNKS = {
    "a tool call's first fragment": {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
        "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "f", "arguments": ""}}]}, "finish_reason": None}]},
    "a later fragment": {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "function": {"arguments": '{"a'}}]}}]},
    "a reasoning delta": {"choices": [{"index": 0, "delta": {"content": None, "reasoning_content": "hm"}}]},
    "a refusal delta": {"choices": [{"index": 0, "delta": {"refusal": "no"}}]},
    "logprobs and a second choice": {"choices": [{"index": 1, "delta": {"content": "a"},
                                                  "logprobs": {"content": []}, "finish_reason": "stop"}]},
}
MALFORMED_CHUNKS = {
    "tool_calls not a list": {"tool_calls": {"index": 0}},
    "an index as text": {"tool_calls": [{"index": "0", "function": {"arguments": "x"}}]},
    "no index": {"tool_calls": [{"function": {"arguments": "x"}}]},
    "arguments as an object": {"tool_calls": [{"index": 0, "function": {"arguments": {"a": 1}}}]},
    "a name that is a number": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": 5}}]},
    "a function that is text": {"tool_calls": [{"index": 0, "function": "f"}]},
    "reasoning as a number": {"reasoning_content": 3},
    "a refusal as a list": {"refusal": ["no"]},
}


@pytest.mark.parametrize("case", sorted(VALID_CHUNKS))
def test_real_chunk_shapes_are_accepted(case):
    check_chunk(VALID_CHUNKS[case])


@pytest.mark.parametrize("case", sorted(MALFORMED_CHUNKS))
def test_malformed_chunk_shapes_are_refused(case):
    with pytest.raises(MalformedAnswer):
        check_chunk({"choices": [{"index": 0, "delta": MALFORMED_CHUNKS[case]}]})


MALFORMED_MESSAGES = {
    "tool_calls as an object": {"tool_calls": {"id": "c"}},
    "a call without an id": {"tool_calls": [{k: v for k, v in CALL.items() if k != "id"}]},
    "arguments as an object": {"tool_calls": [dict(CALL, function={"name": "f", "arguments": {"a": 1}})]},
    "a call of another type": {"tool_calls": [dict(CALL, type="web")]},
    "a refusal as a number": {"refusal": 1},
}


@pytest.mark.parametrize("case", sorted(MALFORMED_MESSAGES))
def test_malformed_completion_shapes_are_refused(case):
    message = {"role": "assistant", "content": None, **MALFORMED_MESSAGES[case]}
    with pytest.raises(MalformedAnswer):
        check_completion({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
    check_completion(FULL_COMPLETION)


async def test_a_malformed_tool_call_from_upstream_is_a_retriable_502(upstreams):
    bad = dict(FULL_COMPLETION, choices=[{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [dict(CALL, function={"name": "f"})]}}])
    upstreams.script("gpt-4o-mini", Behaviour(raw=json.dumps(bad).encode()))
    result = await client_for(upstreams, "openai").complete(upstream_call("openai"))
    assert result.retriable and result.error.status == 502


# -- DeepSeek ------------------------------------------------------------------------------
@pytest.mark.parametrize("field, body", [
    ("json_schema", {"response_format": {"type": "json_schema", "json_schema": {"name": "t"}}}),
    ("image", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
    ("'n'", {"n": 2}),
    ("'logit_bias'", {"logit_bias": {"1": 5}}),
    ("'seed'", {"seed": 1}),
    ("'user'", {"user": "u"}),
    ("'service_tier'", {"service_tier": "flex"}),
    ("'safety_identifier'", {"safety_identifier": "u"}),
    ("'verbosity'", {"verbosity": "high"}),
])
def test_deepseek_refuses_by_name_what_it_cannot_honour(field, body):
    reason = DeepSeekAdapter.unsupported({"messages": [], **body})
    assert reason is not None and field in reason and "DeepSeek" in reason


def test_deepseek_takes_what_its_api_documents():
    body = {"messages": TOOL_LOOP, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}},
            "response_format": {"type": "json_object"}, "logprobs": True, "top_logprobs": 2, "n": 1,
            "parallel_tool_calls": True, "reasoning_effort": "high", "metadata": {"a": "b"}}
    assert DeepSeekAdapter.unsupported(body) is None


def test_deepseek_request_keeps_reasoning_content_and_drops_what_it_does_not_know():
    sent = sent_body("deepseek", messages=TOOL_LOOP, tools=[TOOL], n=1, parallel_tool_calls=True,
                     metadata={"a": "b"}, max_completion_tokens=50, reasoning_effort="high",
                     prompt_cache_key="k", prompt_cache_retention="24h", verbosity="medium", modalities=["text"])
    for absent in ("store", "metadata", "n", "parallel_tool_calls", "max_completion_tokens", "prompt_cache_key",
                   "prompt_cache_retention", "verbosity", "modalities"):
        assert absent not in sent
    assert sent["max_tokens"] == 50 and sent["reasoning_effort"] == "high" and sent["tools"] == [TOOL]
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "what time"}]
    assert sent["messages"][2] == {"role": "assistant", "content": None, "tool_calls": [CALL],
                                   "reasoning_content": "hmm"}
    off = sent_body("deepseek", reasoning_effort="none")
    assert off["thinking"] == {"type": "disabled"} and "reasoning_effort" not in off


async def test_deepseek_thinking_tool_loop_round_trips_reasoning_and_reads_cache_hits(upstreams):
    upstreams.script("deepseek-reasoner", Behaviour(cached_tokens=9, reasoning="weigh it"))
    client = client_for(upstreams, "deepseek")
    first = await client.complete(upstream_call("deepseek", "deepseek-reasoner", tools=[TOOL]))
    assert first.usage == Usage(2 + 9, 3 + 2, cached_tokens=9, reasoning_tokens=2)  # '{"tz": "x"}', 2 words
    message = json.loads(first.body)["choices"][0]["message"]
    assert message["reasoning_content"] == "weigh it" and message["tool_calls"][0]["function"]["name"] == "get_time"
    # The caller echoes the turn with NeuroAPI's fields; DeepSeek's thinking mode needs
    # reasoning_content back (the fake answers 400 without it, as DeepSeek does).
    echoed = dict(message, thinking_blocks=[{"type": "thinking", "thinking": "x", "signature": "s"}])
    loop = [{"role": "user", "content": "hello world"}, echoed,
            {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "noon"}]
    second = await client.complete(upstream_call("deepseek", "deepseek-reasoner", messages=loop, tools=[TOOL]))
    assert json.loads(second.body)["choices"][0]["message"]["content"] == "Echo: noon "
    assert "thinking_blocks" not in upstreams.requests[-1].body["messages"][1]


async def test_deepseek_streams_reasoning_deltas_through(upstreams):
    items = await collect(client_for(upstreams, "deepseek"), upstream_call("deepseek", "deepseek-reasoner"))
    chunks = streamed_chunks(items)
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"])
    assert reasoning == "Let me think about this step by step."
    assert items[-1].usage.reasoning_tokens == 8 and items[-1].usage.cached_tokens == 0
