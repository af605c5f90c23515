"""The Anthropic adapter: OpenAI requests as Messages requests (API version 2026-10-21), and
Anthropic answers and streams as OpenAI completions and chunks. Upstream shapes are checked
with the official ``anthropic`` SDK's types, our output with the official ``openai`` SDK's."""

from __future__ import annotations

import json
from typing import Any, Union

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import (
    ContentBlockParam,
    ImageBlockParam,
    Message,
    OutputConfigParam,
    RawMessageStreamEvent,
    TextBlockParam,
    ThinkingConfigParam,
    ToolChoiceParam,
    ToolParam,
)
from anthropic.types.message_create_params import MessageCreateParamsStreaming
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ConfigDict, TypeAdapter

from actors.providers.adapter import MalformedAnswer, StreamFailed
from actors.providers.anthropic_api import API_VERSION, AnthropicAdapter
from actors.providers.anthropic_request import KNOWN_FIELDS, to_anthropic
from config.settings import load_settings
from core.backend import UpstreamCall
from core.sse import SSEDecoder, SSEEvent

SETTINGS = load_settings(environ={})
ADAPTER = AnthropicAdapter(SETTINGS.providers["anthropic"], "sk-ant-x")
STREAM_EVENT = TypeAdapter(RawMessageStreamEvent)
USER = {"role": "user", "content": "x"}


def _sdk_list(item: Any) -> TypeAdapter:
    """A list of the SDK's request type, validated eagerly (the SDK's ``Iterable`` fields are
    validated lazily) and with unknown keys refused (a typo'd field is not a real shape)."""
    return TypeAdapter(list[item], config=ConfigDict(extra="forbid"))


REQUEST = TypeAdapter(MessageCreateParamsStreaming)
BLOCKS, TOOL_RESULT_BLOCKS = _sdk_list(ContentBlockParam), _sdk_list(Union[TextBlockParam, ImageBlockParam])
FIELD_TYPES = {"system": _sdk_list(TextBlockParam), "tools": _sdk_list(ToolParam),
               "tool_choice": _sdk_list(ToolChoiceParam), "thinking": _sdk_list(ThinkingConfigParam),
               "output_config": _sdk_list(OutputConfigParam)}


def check_with_sdk(request: dict[str, Any]) -> None:
    """``request`` is a Messages request the official SDK could send, down to every block."""
    assert set(request) <= set(MessageCreateParamsStreaming.__annotations__)
    REQUEST.validate_python({**request, "stream": True})
    for name, adapter in FIELD_TYPES.items():
        value = request.get(name)
        if value is not None and not isinstance(value, str):
            adapter.validate_python(value if isinstance(value, list) else [value])
    for message in request["messages"]:
        assert set(message) == {"role", "content"}
        if isinstance(message["content"], list):
            BLOCKS.validate_python(message["content"])
            for block in message["content"]:
                if block["type"] == "tool_result" and isinstance(block["content"], list):
                    TOOL_RESULT_BLOCKS.validate_python(block["content"])


def call(body: dict[str, Any], model: str = "claude-sonnet-4-6", wants_usage: bool = False) -> UpstreamCall:
    return UpstreamCall("req-1", model, body, wants_usage)


def translate(body: dict[str, Any], model: str = "claude-sonnet-4-6", stream: bool = False) -> dict[str, Any]:
    assert AnthropicAdapter.unsupported(body) is None
    _, _, request = ADAPTER.request(call(body, model), stream)
    check_with_sdk(request)
    return request


def refusal(body: dict[str, Any]) -> str | None:
    return AnthropicAdapter.unsupported({"messages": [USER], **body})


# -- upstream event streams, exactly as Anthropic sends them -----------------------------------
def message_start(usage: dict[str, Any] | None = None, message_id: str = "msg_9") -> dict[str, Any]:
    return {"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": "claude-x", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": usage or {"input_tokens": 12, "output_tokens": 1}}}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_end(stop_reason: str, usage: dict[str, Any]) -> list[dict[str, Any]]:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return [{"type": "message_delta", "delta": delta, "usage": usage}, {"type": "message_stop"}]


def sse_bytes(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def sdk_message(events: list[dict[str, Any]]):
    """The message the official SDK's own stream accumulator makes of these events (each event
    validated against the SDK's event types first)."""
    snapshot, buffers = None, {}
    for event in events:
        snapshot = accumulate_event(event=STREAM_EVENT.validate_python(event), current_snapshot=snapshot,
                                    json_bufs=buffers)
    return snapshot


def translate_stream(stream: bytes, reads: list[int] | None = None,
                     wants_usage: bool = False) -> tuple[list[dict[str, Any]], Any]:
    """Our chunks (each parsed by the openai SDK) for an upstream stream, cut into network reads
    at ``reads`` offsets, and the translator."""
    translator = ADAPTER.translator(call({}, wants_usage=wants_usage))
    upstream, out = SSEDecoder(), []
    cuts = [0, *sorted(reads or []), len(stream)]
    for start, end in zip(cuts, cuts[1:]):
        for event in upstream.feed(stream[start:end]):
            out += translator.feed(event)
    chunks = [json.loads(e.data) for e in SSEDecoder().feed(b"".join(out))]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    return chunks, translator


def reassembled_tool_calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls as an OpenAI client accumulates them: by index, arguments concatenated."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls") or ():
                if fragment["index"] not in calls:
                    assert set(fragment) == {"index", "id", "type", "function"}  # the first names the call
                    calls[fragment["index"]] = {"id": fragment["id"], "name": fragment["function"]["name"],
                                                "arguments": fragment["function"]["arguments"]}
                else:
                    assert set(fragment) == {"index", "function"}
                    assert set(fragment["function"]) == {"arguments"}
                    calls[fragment["index"]]["arguments"] += fragment["function"]["arguments"]
    assert sorted(calls) == list(range(len(calls))), "tool-call indexes count from 0 without gaps"
    return [calls[i] for i in sorted(calls)]


def deltas(chunks: list[dict[str, Any]], key: str) -> str:
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in chunks if c["choices"])


# -- request: messages and parameters ----------------------------------------------------------
def test_request_moves_system_merges_roles_and_maps_parameters():
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use British spelling."}]},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Colour?"},
        ],
        "max_tokens": 50, "stop": "END", "temperature": 1, "top_p": 1.0, "user": "u-42", "store": False,
    }
    assert translate(body, "claude-haiku-4-5", stream=True) == {
        "model": "claude-haiku-4-5",
        "system": "Be brief.\n\nUse British spelling.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Colour?"},
        ],
        "max_tokens": 50, "stop_sequences": ["END"], "metadata": {"user_id": "u-42"}, "stream": True,
    }


def test_max_tokens_defaults_and_accepts_max_completion_tokens():
    assert translate({"messages": [USER]})["max_tokens"] == 4096
    assert translate({"messages": [USER], "max_completion_tokens": 7})["max_tokens"] == 7
    assert "stream" not in translate({"messages": [USER]})


def test_the_sdk_check_catches_what_the_api_would_refuse():
    def user(*blocks):
        return {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": list(blocks)}]}
    good = user({"type": "text", "text": "x"})
    check_with_sdk(good)
    for bad in ({**good, "temperature": 1}, {**good, "thinking": {"type": "enabled"}},
                user({"type": "text", "text": "x", "cache": 1}),
                user({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "txt", "text": "x"}]})):
        with pytest.raises((AssertionError, ValueError)):
            check_with_sdk(bad)


def test_headers_pin_the_current_api_version_and_url():
    url, headers, _ = ADAPTER.request(call({"messages": [USER]}), stream=False)
    assert url == "https://api.anthropic.com/v1/messages"
    assert headers["x-api-key"] == "sk-ant-x" and headers["anthropic-version"] == API_VERSION == "2026-10-21"
    assert "sk-ant-x" not in repr(ADAPTER)


CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
               "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": CITY_SCHEMA, "strict": True}},
    {"type": "function", "function": {"name": "now"}},
]


def test_tools_become_anthropic_tools():
    request = translate({"messages": [USER], "tools": TOOLS})
    assert request["tools"] == [
        {"name": "get_weather", "description": "Weather in a city", "strict": True,
         "input_schema": CITY_SCHEMA},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in request


@pytest.mark.parametrize("tool_choice, parallel, expected", [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "now"}}, None, {"type": "tool", "name": "now"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ({"type": "function", "function": {"name": "now"}}, False,
     {"type": "tool", "name": "now", "disable_parallel_tool_use": True}),
    (None, True, None),
])
def test_tool_choice_and_parallel_tool_calls(tool_choice, parallel, expected):
    body = {"messages": [USER], "tools": TOOLS}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert translate(body).get("tool_choice") == expected


THINKING_BLOCKS = [{"type": "thinking", "thinking": "Two cities: two calls.", "signature": "sig-1"},
                   {"type": "redacted_thinking", "data": "opaque"}]


def test_a_tool_loop_turn_becomes_tool_use_and_tool_result_blocks():
    body = {"messages": [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": None, "reasoning_content": "Two cities: two calls.",
         "thinking_blocks": THINKING_BLOCKS, "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2",
         "content": [{"type": "text", "text": "noon", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}],
         "tool_calls": [{"id": "toolu_3", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    ], "tools": TOOLS}
    assert translate(body)["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": [
            *THINKING_BLOCKS,
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2",
             "content": [{"type": "text", "text": "noon", "cache_control": {"type": "ephemeral"}}]},
            {"type": "text", "text": "And tomorrow?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {"city": "Oslo"}}]},
    ]


def test_images_and_cache_control_pass_to_anthropic_blocks():
    body = {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Long manual.",
                                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Compare", "cache_control": {"type": "ephemeral"}},
            {"type": "image_url",
             "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"},
             "cache_control": {"type": "ephemeral"}}]},
    ]}
    request = translate(body)
    assert request["system"] == [
        {"type": "text", "text": "Long manual.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "Be brief."}]
    assert request["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Compare", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"},
         "cache_control": {"type": "ephemeral"}}]}]


def test_json_schema_response_format_becomes_output_config_format():
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    json_schema = {"name": "A", "schema": schema, "strict": True}
    body = {"messages": [USER], "response_format": {"type": "json_schema", "json_schema": json_schema}}
    assert translate(body)["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in translate({"messages": [USER], "response_format": {"type": "text"}})


@pytest.mark.parametrize("effort, expected", [
    ("minimal", "low"), ("low", "low"), ("medium", "medium"), ("high", "high"), ("xhigh", "xhigh"),
    ("max", "max"),
])
def test_reasoning_effort_is_adaptive_thinking_with_effort_on_current_models(effort, expected):
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    request = translate({"messages": [USER], "reasoning_effort": effort, "response_format": response_format},
                        "claude-opus-4-6")
    assert request["thinking"] == {"type": "adaptive"}
    assert request["output_config"] == {"effort": expected,
                                        "format": {"type": "json_schema", "schema": schema}}


@pytest.mark.parametrize("effort, max_tokens, budget", [
    ("minimal", None, 1024), ("low", None, 2048), ("medium", None, 4095), ("high", 32000, 16384),
    ("xhigh", 40000, 32768), ("max", 100000, 65536), ("high", 1025, 1024),
])
def test_reasoning_effort_is_a_thinking_budget_below_max_tokens_on_older_models(effort, max_tokens, budget):
    body = {"messages": [USER], "reasoning_effort": effort}
    if max_tokens:
        body["max_completion_tokens"] = max_tokens
    request = translate(body, "claude-haiku-4-5")
    assert request["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert request["max_tokens"] == (max_tokens or 4096) and "output_config" not in request


def test_reasoning_effort_none_turns_thinking_off():
    for model in ("claude-opus-4-6", "claude-haiku-4-5"):
        request = translate({"messages": [USER], "reasoning_effort": "none"}, model)
        assert request["thinking"] == {"type": "disabled"}


def test_an_assistant_refusal_goes_back_as_its_text():
    refused = [{"role": "assistant", "content": None, "refusal": "I can't."},
               {"role": "assistant", "content": [{"type": "refusal", "refusal": "I won't."}]}]
    turn = translate({"messages": [USER, *refused, USER]})["messages"][1]
    assert turn == {"role": "assistant", "content": [{"type": "text", "text": "I can't."},
                                                     {"type": "text", "text": "I won't."}]}


def test_service_tier_and_safety_identifier_map():
    request = translate({"messages": [USER], "service_tier": "default", "safety_identifier": "hash-1"})
    assert request["service_tier"] == "standard_only" and request["metadata"] == {"user_id": "hash-1"}
    assert translate({"messages": [USER], "service_tier": "auto"})["service_tier"] == "auto"


# Every field of the OpenAI request (tests spec list), with a non-default value: either the
# Messages request changes (mapped) or the adapter refuses it by name. Never silently dropped.
SPEC_FIELDS: dict[str, Any] = {
    "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
    "response_format": {"type": "json_object"}, "reasoning_effort": "high", "logprobs": True,
    "top_logprobs": 2,
    "n": 2, "logit_bias": {"42": 5}, "max_tokens": 9, "max_completion_tokens": 9, "temperature": 0.2,
    "top_p": 0.5, "stop": ["END"], "seed": 1, "user": "u", "presence_penalty": 0.5, "frequency_penalty": 0.5,
    "metadata": {"k": "v"}, "service_tier": "flex", "store": True, "safety_identifier": "s",
    "verbosity": "low", "prompt_cache_key": "k", "prompt_cache_retention": "24h",
    "modalities": ["text", "audio"],
}
NEEDS_TOOLS = {"tool_choice", "parallel_tool_calls"}


@pytest.mark.parametrize("field", sorted(SPEC_FIELDS))
def test_every_openai_field_is_mapped_or_refused_by_name(field):
    base: dict[str, Any] = {"messages": [USER], **({"tools": TOOLS} if field in NEEDS_TOOLS else {})}
    body = {**base, field: SPEC_FIELDS[field]}
    reason = AnthropicAdapter.unsupported(body)
    if reason is not None:
        assert f"'{field}" in reason and "Claude models" in reason
    else:
        assert translate(body) != translate(base), f"{field} was accepted but changed nothing"
    assert field in KNOWN_FIELDS


def test_fields_it_does_not_know_are_refused_by_name():
    assert "'web_search_options'" in refusal({"web_search_options": {}})
    assert "'functions'" in refusal({"functions": [{"name": "f"}]})


def test_default_valued_sampling_fields_are_honoured_and_others_refused():
    assert refusal({"temperature": 1.0, "top_p": 1, "n": 1, "logprobs": False, "presence_penalty": 0,
                    "frequency_penalty": 0.0, "logit_bias": {}, "store": False, "stream": True,
                    "verbosity": "medium", "modalities": ["text"]}) is None
    assert "only 1 is accepted" in refusal({"temperature": 0})


@pytest.mark.parametrize("body, named", [
    ({"messages": [{"role": "user", "content": "x", "name": "me"}]}, "'messages[].name'"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "'input_audio'"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}}]}]}, "detail 'low'"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA=="}}]}]}, "data: URL"),
    ({"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "arguments"),
    ({"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}, "arguments"),
    ({"messages": [USER], "tools": [{"type": "custom", "custom": {"name": "c"}}]}, "'custom' tool"),
    ({"messages": [USER], "tool_choice": "required"}, "without 'tools'"),
    ({"messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}, USER]}, "'image_url' content part"),
    ({"messages": [USER], "tools": TOOLS, "tool_choice": "required", "reasoning_effort": "low"},
     "'tool_choice'"),
    ({"messages": [USER], "reasoning_effort": "low", "max_tokens": 1024}, "'reasoning_effort'"),
    ({"messages": [USER], "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "'response_format'"),
])
def test_what_claude_cannot_honour_is_refused_by_name(body, named):
    reason = AnthropicAdapter.unsupported(body)
    assert reason is not None and named in reason and "Claude models" in reason


# -- answers -------------------------------------------------------------------------------------
def answer(content: list[dict[str, Any]], stop_reason: str = "end_turn",
           usage: dict[str, Any] | None = None) -> dict[str, Any]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
               "content": content, "stop_reason": stop_reason, "stop_sequence": None,
               "usage": usage or {"input_tokens": 10, "output_tokens": 5}}
    Message.model_validate(message)  # a real Anthropic shape
    return message


def completion(message: dict[str, Any]):
    body, usage = ADAPTER.completion(call({}), json.dumps(message).encode())
    ChatCompletion.model_validate(body)
    return body, usage


def test_answer_becomes_an_openai_completion_with_all_input_tokens():
    body, usage = completion(answer(
        [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}], "max_tokens",
        {"input_tokens": 10, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 2,
         "output_tokens": 5}))
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-msg_1"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello world", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20,
                             "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 3}}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens,
            usage.reasoning_tokens) == (15, 5, 2, 3, None)


def test_answer_with_thinking_and_tool_use_becomes_tool_calls_and_reasoning():
    body, usage = completion(answer([
        {"type": "thinking", "thinking": "Two cities.", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ], "tool_use", {"input_tokens": 10, "output_tokens": 50,
                    "output_tokens_details": {"thinking_tokens": 30}}))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant", "content": None, "refusal": None,
        "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}}],
        "reasoning_content": "Two cities.",
        "thinking_blocks": [{"type": "thinking", "thinking": "Two cities.", "signature": "sig-1"},
                            {"type": "redacted_thinking", "data": "opaque"}],
    }
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 30}
    assert usage.reasoning_tokens == 30
    # The caller sends the turn back as it got it: the thinking comes back first, unchanged.
    turn = translate({"messages": [USER, choice["message"]]}, "claude-haiku-4-5")["messages"][1]
    restored = turn["content"]
    assert restored[:2] == choice["message"]["thinking_blocks"]
    assert [b["input"] for b in restored[2:]] == [{"city": "Paris"}, {}]


def test_structured_output_is_answered_as_message_content():
    body, _ = completion(answer([{"type": "text", "text": '{"answer": "42"}'}]))
    assert json.loads(body["choices"][0]["message"]["content"]) == {"answer": "42"}


@pytest.mark.parametrize("raw", [
    {"id": "c", "object": "chat.completion", "choices": []},  # an OpenAI body from the wrong upstream
    {**answer([]), "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]},
    {**answer([]), "usage": {"input_tokens": -1, "output_tokens": 1}},
])
def test_answers_not_in_anthropic_shape_are_unreadable(raw):
    with pytest.raises(MalformedAnswer):
        ADAPTER.completion(call({}), json.dumps(raw).encode())


# -- streams -------------------------------------------------------------------------------------
def text_stream() -> list[dict[str, Any]]:
    return [message_start(), block_start(0, {"type": "text", "text": ""}), {"type": "ping"},
            block_delta(0, {"type": "text_delta", "text": "Hi"}),
            block_delta(0, {"type": "text_delta", "text": " you"}),
            block_stop(0), *message_end("stop_sequence", {"output_tokens": 7})]


@pytest.mark.parametrize("wants_usage", [False, True])
def test_text_stream_becomes_openai_chunks(wants_usage):
    chunks, translator = translate_stream(sse_bytes(text_stream()), wants_usage=wants_usage)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-msg_9" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert deltas(chunks, "content") == "Hi you"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert translator.finished
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (12, 7)
    assert [c for c in chunks if not c["choices"]] == []  # the client sends the usage chunk last, priced
    if wants_usage:
        assert translator.usage_chunk["usage"] == {"prompt_tokens": 12, "completion_tokens": 7,
                                                   "total_tokens": 19}
        assert translator.usage_chunk["id"] == "chatcmpl-msg_9" and translator.usage_chunk["choices"] == []
    else:
        assert translator.usage_chunk is None


def tool_stream() -> list[dict[str, Any]]:
    """Thinking, text, then two parallel tool calls whose JSON arrives in small fragments."""
    paris, oslo = '{"city": "Paris", "days": [1, 2]}', '{"city": "Oslo"}'
    return [
        message_start({"input_tokens": 20, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0,
                       "output_tokens": 1}),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        block_delta(0, {"type": "thinking_delta", "thinking": "Two "}),
        block_delta(0, {"type": "thinking_delta", "thinking": "cities."}),
        block_delta(0, {"type": "signature_delta", "signature": "sig-abc"}),
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        block_delta(1, {"type": "text_delta", "text": "Checking both."}),
        block_stop(1),
        block_start(2, {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}}),
        block_delta(2, {"type": "input_json_delta", "partial_json": ""}),
        *[block_delta(2, {"type": "input_json_delta", "partial_json": paris[i:i + 3]})
          for i in range(0, len(paris), 3)],
        block_stop(2),
        block_start(3, {"type": "tool_use", "id": "toolu_B", "name": "get_weather", "input": {}}),
        *[block_delta(3, {"type": "input_json_delta", "partial_json": c}) for c in oslo],
        block_stop(3),
        block_start(4, {"type": "tool_use", "id": "toolu_C", "name": "now", "input": {}}),
        block_stop(4),
        *message_end("tool_use", {"output_tokens": 90, "output_tokens_details": {"thinking_tokens": 40}}),
    ]


def test_tool_stream_reassembles_into_exactly_the_tool_calls_sent():
    events = tool_stream()
    chunks, translator = translate_stream(sse_bytes(events), reads=list(range(7, 4000, 61)))
    sent = [b for b in sdk_message(events).content if b.type == "tool_use"]
    calls = reassembled_tool_calls(chunks)
    assert [(c["id"], c["name"]) for c in calls] == [(b.id, b.name) for b in sent]
    assert [json.loads(c["arguments"] or "{}") for c in calls] == [b.input for b in sent]
    assert [json.loads(c["arguments"] or "{}") for c in calls] == [{"city": "Paris", "days": [1, 2]},
                                                                   {"city": "Oslo"}, {}]
    assert deltas(chunks, "reasoning_content") == "Two cities."
    assert deltas(chunks, "content") == "Checking both."
    thinking = [c["choices"][0]["delta"]["thinking_blocks"] for c in chunks
                if "thinking_blocks" in c["choices"][0]["delta"]]
    assert thinking == [[{"type": "thinking", "thinking": "Two cities.", "signature": "sig-abc"}]]
    # Order as the caller sees it: all reasoning, then the text, then the calls, then the finish.
    kinds = [next(iter(c["choices"][0]["delta"]), "finish") for c in chunks[1:]]
    assert kinds == sorted(kinds, key=["reasoning_content", "thinking_blocks", "content", "tool_calls",
                                       "finish"].index)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    usage = translator.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens,
            usage.reasoning_tokens) == (120, 90, 100, 0, 40)


def test_redacted_thinking_and_whole_tool_input_at_block_start_are_carried():
    events = [message_start(), block_start(0, {"type": "redacted_thinking", "data": "opaque"}), block_stop(0),
              block_start(1, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}),
              block_stop(1),
              *message_end("tool_use", {"output_tokens": 3})]
    chunks, _ = translate_stream(sse_bytes(events))
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    assert chunks[1]["choices"][0]["delta"] == {"thinking_blocks": [redacted]}
    assert [json.loads(c["arguments"]) for c in reassembled_tool_calls(chunks)] == [
        b.input for b in sdk_message(events).content if b.type == "tool_use"]


def test_error_event_fails_the_stream():
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    events = [*text_stream()[:4], overloaded]
    translator = ADAPTER.translator(call({}))
    with pytest.raises(StreamFailed) as failure:
        for event in SSEDecoder().feed(sse_bytes(events)):
            translator.feed(event)
    assert failure.value.error.status == 502 and failure.value.retriable


@pytest.mark.parametrize("events", [
    [block_delta(0, {"type": "text_delta", "text": "x"})],  # before message_start
    [message_start(), block_delta(5, {"type": "input_json_delta", "partial_json": "{"})],  # unstarted block
    [message_start(), block_start(0, {"type": "text", "text": ""}),
     block_delta(0, {"type": "input_json_delta", "partial_json": "{"})],  # arguments for a text block
    [message_start(), block_start(0, {"type": "tool_use", "id": 1, "name": "f", "input": {}})],
])
def test_events_not_in_anthropic_shape_are_unreadable(events):
    translator = ADAPTER.translator(call({}))
    with pytest.raises(MalformedAnswer):
        for event in events:
            translator.feed(SSEEvent(event["type"], json.dumps(event)))
