"""/v1/messages on a non-Claude backend: the Anthropic request as a Chat Completions request
(which the chat schema accepts, so every backend takes it), and the chat answer and stream back
in Anthropic's shapes, read by the official ``anthropic`` SDK itself."""

import json
from decimal import Decimal

import anthropic
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.providers.adapter import MalformedAnswer
from core.errors import GatewayError
from serve_app.endpoints.chat.schema import parse_chat_request
from serve_app.endpoints.messages.from_chat import ChatToAnthropicStream, message_from_chat
from serve_app.endpoints.messages.schema import parse_messages_request

MODEL = "gpt-4o"
BASE = {"model": MODEL, "max_tokens": 512, "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"name": "get_weather", "description": "Weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
PNG = "iVBORw0KGgo="


def translate(**changes):
    """to_chat through the schema, and the result checked by the chat schema as a caller's body."""
    body, claude_only = parse_messages_request(json.dumps({**BASE, **changes}).encode()).chat_body()
    parse_chat_request(json.dumps(body).encode())
    return body, claude_only


def user(*blocks):
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks):
    return {"role": "assistant", "content": list(blocks)}


# -- request ---------------------------------------------------------------------------------
def test_a_plain_request():
    body, claude_only = translate()
    assert body == {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
                    "max_completion_tokens": 512}
    assert claude_only == []


def test_system_prompt_as_a_string_and_as_cached_blocks():
    assert translate(system="Be brief.")[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "More."}]
    assert translate(system=blocks)[0]["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "More."}]}


def test_images_become_image_url_parts():
    body, _ = translate(messages=[user(
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://img.example.org/cat.jpg"}},
    )])
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://img.example.org/cat.jpg"}}]}]


def test_a_tool_loop_becomes_tool_calls_and_tool_messages_in_order():
    body, claude_only = translate(tools=[TOOL], messages=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        assistant({"type": "thinking", "thinking": "Two calls.", "signature": "sig-1"},
                  {"type": "text", "text": "Checking."},
                  {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                  {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}),
        user({"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
             {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "timeout"}],
              "is_error": True},
             {"type": "text", "text": "Summarise."}),
    ])
    assert body["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}],
         "reasoning_content": "Two calls.",
         "thinking_blocks": [{"type": "thinking", "thinking": "Two calls.", "signature": "sig-1"}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: timeout"},
        {"role": "user", "content": "Summarise."},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": TOOL["input_schema"], "description": "Weather for a city."}}]
    assert claude_only == []


def test_a_tool_turn_of_tool_calls_alone_has_no_content_and_results_alone_no_user_message():
    body, _ = translate(tools=[TOOL], messages=[
        {"role": "user", "content": "Paris?"},
        assistant({"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}),
        user({"type": "tool_result", "tool_use_id": "t1"}),
    ])
    assert body["messages"][1] == {"role": "assistant", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    assert body["messages"][2:] == [{"role": "tool", "tool_call_id": "t1", "content": ""}]


def test_an_image_a_tool_returned_goes_to_the_user_turn_after_the_tool_messages():
    body, _ = translate(tools=[TOOL], messages=[
        {"role": "user", "content": "Screenshot?"},
        assistant({"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}),
        user({"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "done"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}]}),
    ])
    assert body["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "done"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}}]}]


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_weather"}, {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ({"type": "auto", "disable_parallel_tool_use": True}, {"tool_choice": "auto", "parallel_tool_calls": False}),
    ({"type": "any", "disable_parallel_tool_use": False}, {"tool_choice": "required"}),
])
def test_tool_choice(choice, expected):
    body, _ = translate(tools=[TOOL], tool_choice=choice)
    assert {k: body[k] for k in ("tool_choice", "parallel_tool_calls") if k in body} == expected


def test_tool_choice_without_tools_is_not_sent():
    body, _ = translate(tool_choice={"type": "none"})
    assert "tool_choice" not in body and "tools" not in body


@pytest.mark.parametrize("changes, effort", [
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 30000}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 4095}, "max_tokens": 30000}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 8192}, "max_tokens": 30000}, "medium"),
    ({"thinking": {"type": "enabled", "budget_tokens": 16384}, "max_tokens": 30000}, "high"),
    ({"thinking": {"type": "adaptive"}}, "medium"),
    ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}, "max"),
    ({"output_config": {"effort": "low"}}, "low"),
    ({"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}}, None),
    ({}, None),
])
def test_thinking_becomes_reasoning_effort(changes, effort):
    assert translate(**changes)[0].get("reasoning_effort") == effort


def test_sampling_stop_metadata_tier_format_and_stream():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    body, claude_only = translate(
        temperature=0.3, top_p=0.8, stop_sequences=["END", "STOP"], metadata={"user_id": "user-9"},
        service_tier="standard_only", output_config={"format": {"type": "json_schema", "schema": schema}}, stream=True,
        cache_control={"type": "ephemeral"})
    assert body["temperature"] == 0.3 and body["top_p"] == 0.8 and body["stop"] == ["END", "STOP"]
    assert "safety_identifier" not in body and "user" not in body and body["service_tier"] == "default"
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert body["stream"] is True and parse_chat_request(json.dumps(body).encode()).wants_usage_in_stream
    assert claude_only == []


def test_text_documents_are_read_as_text():
    body, claude_only = translate(messages=[user(
        {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain", "data": "a b c"}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "d"}]}},
        {"type": "text", "text": "Summarise."})])
    assert body["messages"][0]["content"] == [{"type": "text", "text": "Notes"}, {"type": "text", "text": "a b c"},
                                              {"type": "text", "text": "d"}, {"type": "text", "text": "Summarise."}]
    assert claude_only == []


@pytest.mark.parametrize("changes, named", [
    ({"top_k": 5}, "top_k"),
    ({"inference_geo": "us"}, "inference_geo"),
    ({"diagnostics": {"previous_message_id": "msg_1"}}, "diagnostics"),
    ({"speed": "fast"}, "speed: fast"),
    ({"max_tokens": 0}, "max_tokens: 0"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "more than 4 stop_sequences"),
    ({"tools": [{**TOOL, "name": f"t{i}"} for i in range(129)]}, "more than 128 tools"),
    ({"tools": [{**TOOL, "name": "n" * 65}]}, "tool names over 64 characters"),
    ({"messages": [user({"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                        "data": "JVBERi0="}})]}, "PDF documents"),
    ({"messages": [user({"type": "document", "citations": {"enabled": True},
                         "source": {"type": "text", "media_type": "text/plain", "data": "x"}})]}, "document citations"),
    ({"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "The colour is"}]},
     "a last turn from the assistant (prefill)"),
])
def test_what_only_claude_honours_is_listed_and_the_body_stays_valid(changes, named):
    body, claude_only = translate(**changes)
    assert claude_only == [named]
    assert "top_k" not in body and "inference_geo" not in body


# Random valid Messages requests: every translation is a request the chat schema accepts.
_text = st.text(max_size=12)
_cache = st.sampled_from([None, {"type": "ephemeral"}])


def _block(kind: str, text: str, cache) -> dict:
    block = {"type": "text", "text": text} if kind == "text" else {
        "type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    return {**block, "cache_control": cache} if cache else block


@st.composite
def messages_requests(draw):
    tools = draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3))
    messages, calls = [], 0
    for turn in range(draw(st.integers(1, 5))):
        blocks = [_block(draw(st.sampled_from(["text", "image"])), draw(_text), draw(_cache))
                  for _ in range(draw(st.integers(0, 3)))]
        pending = [b["id"] for b in (messages[-1]["content"] if messages and isinstance(messages[-1]["content"], list)
                                     else []) if b.get("type") == "tool_use"]
        results = [{"type": "tool_result", "tool_use_id": i, "is_error": draw(st.booleans()),
                    "content": draw(st.sampled_from([None, "ok", [_block("text", "r", None), _block("image", "", None)]]))}
                   for i in pending]
        content = [*results, *blocks]
        messages.append({"role": "user", "content": content if content and draw(st.booleans()) or results
                         else draw(_text)})
        if turn == 0 or draw(st.booleans()):
            reply = [{"type": "thinking", "thinking": draw(_text), "signature": "s"}] if draw(st.booleans()) else []
            reply += [{"type": "text", "text": draw(_text)}] if draw(st.booleans()) else []
            for name in draw(st.lists(st.sampled_from(tools), max_size=2)) if tools else []:
                calls += 1
                reply.append({"type": "tool_use", "id": f"toolu_{calls}", "name": name,
                              "input": draw(st.dictionaries(_text, st.integers() | _text, max_size=2))})
            messages.append({"role": "assistant", "content": reply})
    request = {"model": "m", "max_tokens": draw(st.integers(1, 100_000)), "messages": messages,
               "stream": draw(st.booleans())}
    if tools:
        request["tools"] = [{"name": n, "input_schema": {"type": "object"}} for n in tools]
        request["tool_choice"] = draw(st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"},
                                                       {"type": "tool", "name": tools[0]}]))
    if draw(st.booleans()):
        request["system"] = draw(st.sampled_from(["sys", [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]]))
    return request


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages_requests())
def test_every_translated_request_is_a_valid_chat_request(request):
    body, _ = parse_messages_request(json.dumps(request).encode()).chat_body()
    parse_chat_request(json.dumps(body).encode())
    # Nothing the caller said is lost: every text and tool result reaches the chat body.
    sent = json.dumps(body)
    for message in request["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else ():
            if block["type"] == "tool_result":
                assert json.dumps(block["tool_use_id"]) in sent


# -- answer ----------------------------------------------------------------------------------
def completion(content="Hello!", tool_calls=None, reasoning=None, finish="stop", usage=None, refusal=None):
    message = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {"id": "chatcmpl-abc123", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def call(i, name, arguments):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}


def test_a_text_answer():
    message = message_from_chat(completion(), MODEL)
    assert message == {"id": "msg_abc123", "type": "message", "role": "assistant", "model": MODEL,
                       "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn", "stop_sequence": None,
                       "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 0,
                                 "cache_creation_input_tokens": 0}}


def test_reasoning_text_and_tool_calls_in_anthropic_order_with_usage_and_cost():
    usage = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
             "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10},
             "completion_tokens_details": {"reasoning_tokens": 12}, "cost_units": Decimal("0.000123")}
    answer = completion("Let me look.", [call(1, "get_weather", '{"city": "Paris"}'), call(2, "noop", "")],
                        reasoning="Think.", finish="tool_calls", usage=usage)
    message = message_from_chat(answer, MODEL)
    assert message["content"] == [
        {"type": "thinking", "thinking": "Think.", "signature": ""},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "noop", "input": {}}]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 30, "output_tokens": 40, "cache_read_input_tokens": 60,
                                "cache_creation_input_tokens": 10, "output_tokens_details": {"thinking_tokens": 12},
                                "cost_units": Decimal("0.000123")}


@pytest.mark.parametrize("finish, stop", [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
                                          ("content_filter", "refusal"), (None, "end_turn")])
def test_finish_reasons(finish, stop):
    assert message_from_chat(completion(finish=finish), MODEL)["stop_reason"] == stop


def test_a_refusal_is_text():
    message = message_from_chat(completion(None, refusal="I can't help with that.", finish="content_filter"), MODEL)
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", '"text"', "not json"])
def test_tool_arguments_that_are_no_json_object_are_a_malformed_answer_not_an_empty_input(arguments):
    with pytest.raises(MalformedAnswer):
        message_from_chat(completion(None, [call(1, "f", arguments)], finish="tool_calls"), MODEL)


def test_the_official_sdk_reads_the_message_without_loss():
    answer = completion("Hi", [call(1, "get_weather", '{"city": "Paris"}')], reasoning="R", finish="tool_calls",
                        usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12, "cost_units": 0.5})
    message = message_from_chat(answer, MODEL)
    parsed = anthropic.types.Message.model_validate(message)
    assert parsed.to_dict() == message
    assert parsed.usage.cost_units == 0.5 and parsed.content[2].input == {"city": "Paris"}


# -- stream ----------------------------------------------------------------------------------
def chat_stream(answer: dict, pieces: dict | None = None, order: list | None = None) -> bytes:
    """The SSE bytes the gateway relays for ``answer``: each text cut at ``pieces[name]`` (cut
    points), tool-call fragments interleaved by ``order`` (each pick chooses among the calls with
    fragments left; none: one call after another), then the finish chunk, the usage chunk and
    ``[DONE]``."""
    pieces = pieces or {}
    message = answer["choices"][0]["message"]
    head = {"id": answer["id"], "object": "chat.completion.chunk", "created": 1, "model": answer["model"]}

    def chunk(delta, finish=None):
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def cut(text, points):
        bounds = sorted({0, len(text), *(p for p in points if 0 < p < len(text))})
        return [text[a:b] for a, b in zip(bounds, bounds[1:])]

    chunks = [chunk({"role": "assistant", "content": ""})]
    for name in ("reasoning_content", "content"):
        chunks += [chunk({name: part}) for part in cut(message.get(name) or "", pieces.get(name, ()))]
    fragments = []
    for i, tool_call in enumerate(message.get("tool_calls") or ()):
        parts = cut(tool_call["function"]["arguments"], pieces.get(f"tool{i}", ()))
        first = {"index": i, "id": tool_call["id"], "type": "function",
                 "function": {"name": tool_call["function"]["name"], "arguments": ""}}
        fragments.append([first, *({"index": i, "function": {"arguments": p}} for p in parts)])
    picks, started = list(order or []), 0
    while any(fragments):
        # Calls start in index order (as every upstream sends them); their fragments may interleave.
        left = [i for i, f in enumerate(fragments) if f and i <= started]
        i = left[picks.pop(0) % len(left) if picks else 0]
        started += i == started
        chunks.append(chunk({"tool_calls": [fragments[i].pop(0)]}))
    chunks.append(chunk({}, answer["choices"][0]["finish_reason"]))
    chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def translate_stream(raw: bytes, cuts=()) -> bytes:
    stream = ChatToAnthropicStream(MODEL)
    bounds = sorted({0, len(raw), *(c for c in cuts if 0 < c < len(raw))})
    out = b"".join(stream.feed(raw[a:b]) for a, b in zip(bounds, bounds[1:]))
    assert stream.finished
    return out


_served = {}


def _sdk_handler(request):
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=_served["body"])


SDK = anthropic.Anthropic(api_key="test", base_url="http://neuroapi.test", max_retries=0,
                          http_client=httpx2.Client(transport=httpx2.MockTransport(_sdk_handler)))


def sdk_final_message(anthropic_sse: bytes):
    """What the official SDK's own stream accumulation makes of our events."""
    _served["body"] = anthropic_sse
    with SDK.messages.stream(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]) as stream:
        return stream.get_final_message()


def expected_message(answer: dict) -> dict:
    message = message_from_chat(answer, MODEL)
    message["usage"].pop("cost_units", None)  # NeuroAPI's own: the SDK's accumulation keeps only its fields
    return anthropic.types.Message.model_validate(message).model_dump(exclude_none=True)


def as_dict(final) -> dict:
    return anthropic.types.Message.model_validate(final.model_dump(exclude_none=True)).model_dump(exclude_none=True)


def events(anthropic_sse: bytes) -> list[tuple[str, dict]]:
    out = []
    for raw in anthropic_sse.decode().split("\n\n")[:-1]:
        kind, data = raw.split("\n")
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_a_streamed_text_answer_is_anthropics_event_sequence():
    answer = completion("Hello there", usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9,
                                              "cost_units": 0.25})
    sse = translate_stream(chat_stream(answer, {"content": [5]}))
    kinds = [kind for kind, _ in events(sse)]
    assert kinds == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    start = events(sse)[0][1]["message"]
    assert start["id"] == "msg_abc123" and start["model"] == MODEL and start["content"] == []
    delta = events(sse)[6][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["input_tokens"] == 7 and delta["usage"]["cost_units"] == 0.25
    assert as_dict(sdk_final_message(sse)) == expected_message(answer)


def test_cost_units_keep_their_exact_decimal_text():
    answer = completion(usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9, "cost_units": 1})
    raw = chat_stream(answer).replace(b'"cost_units": 1}', b'"cost_units": 0.000000123456789012345}')
    assert b'"cost_units": 0.000000123456789012345}' in translate_stream(raw)


def test_a_streamed_tool_loop_answer_with_reasoning():
    answer = completion(None, [call(1, "get_weather", '{"city": "Paris"}'), call(2, "get_time", '{"tz": "CET"}')],
                        reasoning="Two lookups.", finish="tool_calls")
    sse = translate_stream(chat_stream(answer, {"reasoning_content": [3], "tool0": [2, 9], "tool1": [4]}))
    final = sdk_final_message(sse)
    assert as_dict(final) == expected_message(answer)
    assert [b.type for b in final.content] == ["thinking", "tool_use", "tool_use"]
    assert final.content[1].input == {"city": "Paris"} and final.stop_reason == "tool_use"
    json_deltas = [d["delta"]["partial_json"] for k, d in events(sse)
                   if k == "content_block_delta" and d["delta"]["type"] == "input_json_delta"]
    assert len(json_deltas) >= 3  # the first call streams fragment by fragment


def test_interleaved_tool_calls_still_give_each_call_its_own_arguments():
    answer = completion(None, [call(1, "a", '{"x": [1, 2, 3]}'), call(2, "b", '{"y": "zzz"}')], finish="tool_calls")
    raw = chat_stream(answer, {"tool0": [3, 7, 11], "tool1": [2, 6]}, order=[0, 1, 0, 1, 0, 1])
    final = sdk_final_message(translate_stream(raw))
    assert [(b.name, b.input) for b in final.content] == [("a", {"x": [1, 2, 3]}), ("b", {"y": "zzz"})]


def test_tool_arguments_that_are_no_json_object_end_the_stream_with_an_error_event():
    answer = completion(None, [call(1, "a", '{"x": ')], finish="tool_calls")
    sse = translate_stream(chat_stream(answer))
    kind, data = events(sse)[-1]
    assert kind == "error" and data["type"] == "error" and data["error"]["type"] == "api_error"
    with pytest.raises(anthropic.APIStatusError):
        sdk_final_message(sse)


@pytest.mark.parametrize("error, anthropic_type", [
    ({"message": "The upstream provider is rate limiting; retry shortly.", "type": "rate_limit_error",
      "param": None, "code": "upstream_rate_limited"}, "rate_limit_error"),
    ({"message": "The request ran past its deadline.", "type": "server_error", "param": None,
      "code": "upstream_timeout"}, "timeout_error"),
    ({"message": "The model is at capacity; retry shortly.", "type": "server_error", "param": None,
      "code": "model_overloaded"}, "overloaded_error"),
    ({"message": "The gateway lost the upstream stream.", "type": "server_error", "param": None,
      "code": "upstream_error"}, "api_error"),
])
def test_the_gateways_error_event_becomes_anthropics_and_the_sdk_raises_it(error, anthropic_type):
    raw = chat_stream(completion("Partial answer")).split(b"data: [DONE]")[0]
    raw = raw.rsplit(b"data: ", 2)[0]  # cut before the finish and usage chunks
    stream = ChatToAnthropicStream(MODEL)
    sse = stream.feed(raw) + stream.feed(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
    assert stream.finished and stream.feed(b"data: [DONE]\n\n") == b""
    kind, data = events(sse)[-1]
    assert (kind, data) == ("error", {"type": "error", "error": {"type": anthropic_type, "message": error["message"]}})
    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk_final_message(sse)
    assert raised.value.body["error"]["type"] == anthropic_type


def test_a_failure_the_gateway_holds_as_an_error():
    stream = ChatToAnthropicStream(MODEL)
    stream.feed(chat_stream(completion()).split(b"\n\n")[0] + b"\n\n")
    sse = stream.fail(GatewayError(503, "The model is at capacity; retry shortly.", "server_error", "model_overloaded"))
    assert events(sse) == [("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                 "message": "The model is at capacity; retry shortly."}})]


def test_a_stream_without_a_usage_chunk_ends_at_done():
    raw = chat_stream(completion("Hi")).replace(b"data: [DONE]", b"").rsplit(b"data: ", 1)[0] + b"data: [DONE]\n\n"
    sse = translate_stream(raw)
    assert [k for k, _ in events(sse)][-2:] == ["message_delta", "message_stop"]
    assert sdk_final_message(sse).content[0].text == "Hi"


# The same answer, however the backend fragments its text and tool calls and however the bytes
# are split on the way, gives the same final message as the non-streamed translation.
_args = st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=8) | st.lists(st.integers(), max_size=3),
                        max_size=3)


@st.composite
def streamed_answers(draw):
    calls = [call(i, draw(st.sampled_from(["a", "b", "get_weather"])), json.dumps(draw(_args)))
             for i in range(draw(st.integers(0, 3)))]
    content = draw(st.one_of(st.none(), st.text(min_size=1, max_size=40)))
    reasoning = draw(st.one_of(st.none(), st.text(min_size=1, max_size=30)))
    usage = {"prompt_tokens": draw(st.integers(0, 10_000)), "completion_tokens": draw(st.integers(0, 10_000))}
    cached = draw(st.integers(0, usage["prompt_tokens"]))
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if draw(st.booleans()):
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    answer = completion(content, calls, reasoning, "tool_calls" if calls else draw(st.sampled_from(["stop", "length"])),
                        usage)
    cuts = {name: draw(st.lists(st.integers(0, 60), max_size=5)) for name in
            ("reasoning_content", "content", "tool0", "tool1", "tool2")}
    order = draw(st.one_of(st.none(), st.lists(st.integers(0, 2), max_size=20)))
    return answer, cuts, order


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streamed_answers(), st.lists(st.integers(0, 5000), max_size=30))
def test_any_fragmentation_gives_the_non_streamed_message(generated, byte_cuts):
    answer, cuts, order = generated
    raw = chat_stream(answer, cuts, order)
    sse = translate_stream(raw, byte_cuts)
    assert as_dict(sdk_final_message(sse)) == expected_message(answer)
