"""The fakes must speak the providers' real wire formats: the official SDKs parse them."""

import anthropic
import openai

from tests.support.upstreams import CREDENTIALS, Behaviour


def test_openai_sdk_reads_the_fake_openai_and_deepseek(upstreams):
    for provider, model in (("openai", "gpt-4o-mini"), ("deepseek", "deepseek-chat")):
        client = openai.OpenAI(base_url=upstreams.base_urls()[provider], api_key=CREDENTIALS[provider], max_retries=0)
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "ping pong"}])
        assert answer.choices[0].message.content == "Echo: ping pong "
        chunks = list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "ping pong"}], stream=True,
            stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: ping pong "
        assert chunks[-1].usage.completion_tokens == 3


def test_anthropic_sdk_reads_the_fake_anthropic(upstreams):
    client = anthropic.Anthropic(base_url=upstreams.base_urls()["anthropic"], api_key=CREDENTIALS["anthropic"], max_retries=0)
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                     messages=[{"role": "user", "content": "ping pong"}])
    assert message.content[0].text == "Echo: ping pong " and message.usage.output_tokens == 3
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=10,
                                messages=[{"role": "user", "content": "ping pong"}]) as stream:
        assert "".join(stream.text_stream) == "Echo: ping pong "
        assert stream.get_final_message().usage.output_tokens == 3


def test_the_fakes_fail_the_way_providers_do(upstreams):
    upstreams.script("claude-haiku-4-5", Behaviour(status=529))
    client = anthropic.Anthropic(base_url=upstreams.base_urls()["anthropic"], api_key=CREDENTIALS["anthropic"], max_retries=0)
    try:
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    except anthropic.APIStatusError as error:
        assert error.status_code == 529
    else:
        raise AssertionError("expected an overloaded error")
    upstreams.script("gpt-4o-mini", Behaviour(mid_stream_error=True))
    client = openai.OpenAI(base_url=upstreams.base_urls()["openai"], api_key=CREDENTIALS["openai"], max_retries=0)
    try:
        list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "a b c d"}]))
    except openai.APIError:
        pass
    else:
        raise AssertionError("expected a stream error")


# -- the whole API: each new shape read by the official SDKs' own parsers -----------------------
import json  # noqa: E402

import pytest  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from tests.support.upstreams import instance_of, signature_for  # noqa: E402


class Address(BaseModel):
    street: str
    zip_code: int


class Weather(BaseModel):
    city: str
    unit: str = "celsius"
    days: list[int]
    home: Address | None = None
    ratio: float
    urgent: bool


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                 "parameters": Weather.model_json_schema()}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["tz"]}}}
ASK = [{"role": "user", "content": "weather in Paris"}]


def openai_client(upstreams, provider: str = "openai") -> openai.OpenAI:
    return openai.OpenAI(base_url=upstreams.base_urls()[provider], api_key=CREDENTIALS[provider], max_retries=0)


def anthropic_client(upstreams) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=upstreams.base_urls()["anthropic"], api_key=CREDENTIALS["anthropic"],
                               max_retries=0)


def test_generated_arguments_follow_pydantic_schemas_with_refs_and_optionals():
    generated = instance_of(Weather.model_json_schema())
    assert Weather.model_validate(generated).home == Address(street="x", zip_code=1)
    assert instance_of({"type": "string", "enum": ["b", "a"]}) == "b"
    assert instance_of({"type": "array", "items": {"type": "number"}}) == [1.5]


@pytest.mark.parametrize("provider, model", [("openai", "gpt-4o-mini"), ("deepseek", "deepseek-chat")])
def test_an_unscripted_tool_loop_calls_the_first_tool_then_echoes_its_result(upstreams, provider, model):
    client = openai_client(upstreams, provider)
    answer = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    Weather.model_validate_json(call.function.arguments)
    turn = [*ASK, choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny and 21C"}]
    final = client.chat.completions.create(model=model, messages=turn, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == "Echo: sunny and 21C " and final.choices[0].finish_reason == "stop"


def test_forced_and_none_tool_choices_are_honoured(upstreams):
    client = openai_client(upstreams)
    named = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL],
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert named.choices[0].message.tool_calls[0].function.arguments == '{"tz": "UTC"}'
    none = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, tools=[WEATHER_TOOL], tool_choice="none")
    assert none.choices[0].message.content == "Echo: weather in Paris " and none.choices[0].message.tool_calls is None


@pytest.mark.parametrize("fragment", [None, 1, 3])
def test_streamed_parallel_tool_calls_reassemble_in_the_sdk(upstreams, fragment):
    calls = [("get_weather", '{"city": "Paris", "days": [1, 2]}'), ("get_time", '{"tz": "CET"}')]
    upstreams.script("gpt-4o-mini", Behaviour(tool_calls=calls, fragment=fragment))
    with openai_client(upstreams).chat.completions.stream(
            model="gpt-4o-mini", messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL]) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == calls
    assert final.choices[0].finish_reason == "tool_calls"


def test_fragments_are_the_size_asked_for(upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(tool_calls=[("get_time", '{"tz": "CET"}')], fragment=4))
    chunks = list(openai_client(upstreams).chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=[TIME_TOOL], stream=True))
    fragments = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert fragments[0].id and fragments[0].function.name == "get_time" and fragments[0].function.arguments == ""
    assert [f.function.arguments for f in fragments[1:]] == ['{"tz', '": "', 'CET"', "}"]
    assert all(f.id is None for f in fragments[1:])


def test_parse_with_a_pydantic_model_and_json_object(upstreams):
    client = openai_client(upstreams)
    parsed = client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Weather)
    assert parsed.choices[0].message.parsed == Weather.model_validate(instance_of(Weather.model_json_schema()))
    with client.chat.completions.stream(model="gpt-4o-mini", messages=ASK, response_format=Weather) as stream:
        assert stream.get_final_completion().choices[0].message.parsed.city == "x"
    answer = openai_client(upstreams, "deepseek").chat.completions.create(
        model="deepseek-chat", messages=ASK, response_format={"type": "json_object"})
    assert json.loads(answer.choices[0].message.content) == {"echo": "weather in Paris"}


def test_openai_usage_reports_cached_and_reasoning_tokens_and_images_count_85(upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(cached_tokens=5, reasoning="a b c"))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
    answer = openai_client(upstreams).chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": [{"type": "text", "text": "what is this"}, image]}])
    usage = answer.usage
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens) == (3 + 85 + 5, 5)
    assert usage.completion_tokens == 4 + 3 and usage.completion_tokens_details.reasoning_tokens == 3
    assert not hasattr(answer.choices[0].message, "reasoning_content")  # OpenAI keeps it hidden


def test_n_choices_and_logprobs(upstreams):
    answer = openai_client(upstreams).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}], n=2, logprobs=True, top_logprobs=2)
    assert [c.index for c in answer.choices] == [0, 1]
    tokens = answer.choices[1].logprobs.content
    assert [t.token for t in tokens] == ["Echo: ", "a ", "b "] and len(tokens[0].top_logprobs) == 2


def test_deepseek_reasoner_reasons_reports_cache_hits_and_wants_its_reasoning_back(upstreams):
    upstreams.script("deepseek-reasoner", Behaviour(reasoning="think hard", cached_tokens=7))
    client = openai_client(upstreams, "deepseek")
    answer = client.chat.completions.create(model="deepseek-reasoner", messages=ASK, tools=[TIME_TOOL])
    message = answer.choices[0].message
    assert message.model_extra["reasoning_content"] == "think hard"
    assert answer.usage.model_extra["prompt_cache_hit_tokens"] == 7
    assert answer.usage.model_extra["prompt_cache_miss_tokens"] == 3
    assert answer.usage.completion_tokens_details.reasoning_tokens == 2
    call = message.tool_calls[0]
    result = {"role": "tool", "tool_call_id": call.id, "content": "12:00"}
    without = {k: v for k, v in message.model_dump(exclude_none=True).items() if k != "reasoning_content"}
    with pytest.raises(openai.BadRequestError, match="reasoning_content"):
        client.chat.completions.create(model="deepseek-reasoner", messages=[*ASK, without, result])
    final = client.chat.completions.create(model="deepseek-reasoner",
                                           messages=[*ASK, message.model_dump(exclude_none=True), result])
    assert final.choices[0].message.content == "Echo: 12:00 "
    chunks = list(client.chat.completions.create(model="deepseek-reasoner", messages=ASK, stream=True))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    assert reasoning == "Let me think about this step by step."


def test_fake_openai_rejects_what_openai_rejects(upstreams):
    client = openai_client(upstreams)
    echoed = {"role": "assistant", "content": "hi", "reasoning_content": "hmm"}
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="gpt-4o-mini", messages=[*ASK, echoed, *ASK])
    assert error.value.body["param"] == "messages[1].reasoning_content"
    cached_part = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    with pytest.raises(openai.BadRequestError, match="cache_control"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [cached_part]}])
    with pytest.raises(openai.BadRequestError, match="preceeding message with 'tool_calls'"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            *ASK, {"role": "tool", "tool_call_id": "call_x", "content": "r"}])
    client.chat.completions.create(model="gpt-4o-mini", messages=ASK, store=False)
    assert upstreams.requests[-1].body["store"] is False  # recorded, so a test can check what was sent
    with pytest.raises(openai.UnprocessableEntityError):
        openai_client(upstreams, "deepseek").chat.completions.create(model="deepseek-chat", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}])


ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": Weather.model_json_schema()},
                   {"name": "get_time", "input_schema": TIME_TOOL["function"]["parameters"]}]
CLAUDE = "claude-haiku-4-5"


def test_anthropic_tool_use_then_tool_result(upstreams):
    client = anthropic_client(upstreams)
    message = client.messages.create(model=CLAUDE, max_tokens=100, messages=ASK, tools=ANTHROPIC_TOOLS)
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.id.startswith("toolu_")
    Weather.model_validate(use.input)
    turn = [*ASK, {"role": "assistant", "content": [b.model_dump() for b in message.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "rainy"}]}]
    final = client.messages.create(model=CLAUDE, max_tokens=100, messages=turn, tools=ANTHROPIC_TOOLS)
    assert final.content[0].text == "Echo: rainy " and final.stop_reason == "end_turn"
    forced = client.messages.create(model=CLAUDE, max_tokens=100, messages=ASK, tools=ANTHROPIC_TOOLS,
                                    tool_choice={"type": "tool", "name": "get_time"})
    assert forced.content[-1].input == {"tz": "UTC"}


@pytest.mark.parametrize("fragment", [None, 2])
def test_anthropic_streamed_parallel_tool_use_reassembles_in_the_sdk(upstreams, fragment):
    calls = [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')]
    upstreams.script(CLAUDE, Behaviour(tool_calls=calls, fragment=fragment))
    with anthropic_client(upstreams).messages.stream(model=CLAUDE, max_tokens=100, messages=ASK,
                                                     tools=ANTHROPIC_TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
    partial = [e.delta.partial_json for e in events if e.type == "content_block_delta"
               and e.delta.type == "input_json_delta"]
    assert "".join(partial) == '{"city": "Paris"}{"tz": "CET"}'
    assert all(len(p) <= (fragment or 100) for p in partial) and final.stop_reason == "tool_use"


def test_anthropic_thinking_is_signed_and_only_an_issued_signature_comes_back(upstreams):
    client = anthropic_client(upstreams)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with client.messages.stream(model=CLAUDE, max_tokens=2048, messages=ASK, tools=ANTHROPIC_TOOLS,
                                thinking=thinking) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        message = stream.get_final_message()
    first = message.content[0]
    assert first.type == "thinking" and first.signature == signature_for(first.thinking)
    assert "thinking_delta" in kinds and "signature_delta" in kinds
    assert message.usage.output_tokens_details.thinking_tokens == len(first.thinking.split())
    use = message.content[-1]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "ok"}]}
    restored = {"role": "assistant", "content": [b.model_dump() for b in message.content]}
    final = client.messages.create(model=CLAUDE, max_tokens=2048, thinking=thinking, tools=ANTHROPIC_TOOLS,
                                   messages=[*ASK, restored, result])
    assert final.content[-1].text == "Echo: ok "
    dropped = {"role": "assistant", "content": [b.model_dump() for b in message.content[1:]]}
    forged = {"role": "assistant", "content": [dict(first.model_dump(), signature="sig-forged"),
                                               *dropped["content"]]}
    for wrong in (dropped, forged):
        with pytest.raises(anthropic.BadRequestError):
            client.messages.create(model=CLAUDE, max_tokens=2048, thinking=thinking, tools=ANTHROPIC_TOOLS,
                                   messages=[*ASK, wrong, result])
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        client.messages.create(model=CLAUDE, max_tokens=2048, messages=ASK,
                               thinking={"type": "enabled", "budget_tokens": 512})


def test_anthropic_rejects_misplaced_tool_results(upstreams):
    orphan = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]}
    with pytest.raises(anthropic.BadRequestError, match="tool_result"):
        anthropic_client(upstreams).messages.create(model=CLAUDE, max_tokens=10, messages=[*ASK, orphan])


def test_anthropic_structured_output_cache_usage_and_images(upstreams):
    upstreams.script(CLAUDE, Behaviour(cached_tokens=11, cache_write_tokens=13))
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    message = anthropic_client(upstreams).messages.create(
        model=CLAUDE, max_tokens=100, system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "what is this"}]}],
        output_config={"format": {"type": "json_schema", "schema": Weather.model_json_schema()}})
    assert Weather.model_validate_json(message.content[0].text).city == "x"
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (2 + 3 + 85, 11, 13)
