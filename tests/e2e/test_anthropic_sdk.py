"""``POST /v1/messages`` through the official ``anthropic`` SDK, sync and async, streamed and not,
against the session's real gateway: a Claude model (its caller's body passed to the fake Anthropic
API unchanged), a GPT model (translated to the fake OpenAI API and back) and the in-house SmolLM2
(translated to our own replicas): text, a whole tool loop, an image, count_tokens, typed errors."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from tests.support.gateway_client import caller_address
from tests.support.upstreams import Behaviour

IN_HOUSE = "smollm2-135m-instruct"
CLAUDE, GPT = "claude-haiku-4-5", "gpt-4o-mini"
MODELS = [CLAUDE, GPT, IN_HOUSE]
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
WEATHER_TOOL = {"name": "get_weather", "description": "Weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                                 "required": ["city"], "additionalProperties": False}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def sync_client(gateway, api_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=120,
                               default_headers={"X-Forwarded-For": caller_address()})


def async_client(gateway, api_key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=120,
                                    default_headers={"X-Forwarded-For": caller_address()})


async def create(gateway, api_key: str, variant: str, **request: Any) -> anthropic.types.Message:
    """One message, the way ``variant`` asks: sync or async SDK, whole or streamed."""
    if variant == "sync":
        return sync_client(gateway, api_key).messages.create(**request)
    if variant == "sync-stream":
        with sync_client(gateway, api_key).messages.stream(**request) as stream:
            streamed = "".join(stream.text_stream)
            message = stream.get_final_message()
        assert streamed == "".join(b.text for b in message.content if b.type == "text")
        return message
    if variant == "async":
        return await async_client(gateway, api_key).messages.create(**request)
    async with async_client(gateway, api_key).messages.stream(**request) as stream:
        return await stream.get_final_message()


def text_of(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


@pytest.mark.parametrize("variant", ["sync", "sync-stream", "async", "async-stream"])
@pytest.mark.parametrize("model", MODELS)
async def test_a_text_answer(gateway, api_key, model, variant):
    message = await create(gateway, api_key, variant, model=model, max_tokens=16,
                           messages=[{"role": "user", "content": "Say hello to the gateway."}])
    assert message.type == "message" and message.role == "assistant" and message.model == model
    assert message.stop_reason in (("end_turn", "max_tokens") if model == IN_HOUSE else ("end_turn",))
    if model == IN_HOUSE:
        assert text_of(message)
    else:
        assert text_of(message).strip() == "Echo: Say hello to the gateway."
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


def tool_request(model: str, **more: Any) -> dict[str, Any]:
    # The in-house model has no auto tool parser: its caller names the tool.
    choice = {"type": "tool", "name": "get_weather"} if model == IN_HOUSE else {"type": "auto"}
    return {"model": model, "max_tokens": 48, "tools": [WEATHER_TOOL], "tool_choice": choice, **more}


@pytest.mark.parametrize("variant", ["sync-stream", "async"])
@pytest.mark.parametrize("model", MODELS)
async def test_a_whole_tool_loop(gateway, api_key, upstreams, model, variant):
    if model != IN_HOUSE:
        upstreams.script(model, Behaviour(tool_calls=[("get_weather", '{"city": "Paris"}')], fragment=3))
    first = await create(gateway, api_key, variant, messages=ASK, **tool_request(model))
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and set(call.input) == {"city"}
    if model != IN_HOUSE:
        assert call.input == {"city": "Paris"}
    result = f"sunny in {call.input['city']}"
    follow_up = [*ASK, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]}]
    final_request = tool_request(model) if model != IN_HOUSE else {"model": model, "max_tokens": 24}
    final = await create(gateway, api_key, variant, messages=follow_up, **final_request)
    assert final.stop_reason in ("end_turn", "max_tokens") and text_of(final)
    if model != IN_HOUSE:
        assert text_of(final).strip() == f"Echo: {result}"
        # The tool result reached the model in its provider's own shape.
        sent = upstreams.for_model(model)[-1].body["messages"]
        assert result in json.dumps(sent)


@pytest.mark.parametrize("model", [CLAUDE, GPT])
async def test_an_image_reaches_the_model(gateway, api_key, upstreams, model):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64}}
    message = await create(gateway, api_key, "sync", model=model, max_tokens=16, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])
    assert text_of(message).strip() == "Echo: What is this?"
    assert PNG_BASE64 in json.dumps(upstreams.for_model(model)[-1].body)


def test_an_image_for_a_model_without_vision_is_a_typed_400(gateway, api_key):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        sync_client(gateway, api_key).messages.create(model=IN_HOUSE, max_tokens=8, messages=[
            {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])
    assert refused.value.body["error"]["type"] == "invalid_request_error"


def test_count_tokens(gateway, api_key, embedded_tokenizer):
    client = sync_client(gateway, api_key)
    messages = [{"role": "user", "content": "one two three four five"}]
    claude = client.messages.with_raw_response.count_tokens(model=CLAUDE, messages=messages, system="be brief")
    assert claude.parse().input_tokens == 7 and claude.headers["x-neuroapi-token-count"] == "exact"  # the fake's count
    in_house = client.messages.with_raw_response.count_tokens(model=IN_HOUSE, messages=messages)
    prompt = embedded_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = len(embedded_tokenizer(prompt, add_special_tokens=False).input_ids)
    assert in_house.parse().input_tokens == expected and in_house.headers["x-neuroapi-token-count"] == "exact"
    gpt = client.messages.with_raw_response.count_tokens(model=GPT, messages=messages)
    assert gpt.parse().input_tokens > 0 and gpt.headers["x-neuroapi-token-count"] == "estimated"


async def test_errors_are_the_sdks_own_types(gateway, api_key, upstreams):
    client = async_client(gateway, api_key)
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await client.messages.create(model="no-such-model", max_tokens=8, messages=ASK)
    assert unknown.value.body["type"] == "error" and unknown.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic.AsyncAnthropic(base_url=gateway.url, api_key="neuro_wrong", max_retries=0).messages.create(
            model=CLAUDE, max_tokens=8, messages=ASK)
    with pytest.raises(anthropic.BadRequestError) as bad:
        # This SDK version has no temperature argument; callers of older ones send it.
        await client.messages.create(model=GPT, max_tokens=8, messages=ASK, extra_body={"temperature": 1.5})
    assert "temperature" in bad.value.message
    upstreams.script(CLAUDE, Behaviour(mid_stream_error=True))
    with pytest.raises(anthropic.APIStatusError):  # an error event mid-stream: the SDK raises it
        async with client.messages.stream(model=CLAUDE, max_tokens=8, messages=ASK) as stream:
            async for _ in stream:
                pass


def test_a_claude_request_reaches_anthropic_field_for_field(gateway, api_key, upstreams):
    """Nothing a caller sends for a Claude model is lost or rewritten on the way (but auth)."""
    body = {
        "model": CLAUDE, "max_tokens": 2000, "mode": "fast",
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64}},
            {"type": "text", "text": "Where was this taken?", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]}],
        "tools": [WEATHER_TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "stop_sequences": ["\n\nHuman:"], "temperature": 0.3, "top_k": 20,
        "metadata": {"user_id": "user-42"}, "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01", "X-Forwarded-For": caller_address(),
               "anthropic-beta": "interleaved-thinking-2025-05-14,files-api-2025-04-14"}
    response = httpx.post(gateway.url + "/v1/messages", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    [sent] = upstreams.for_model(CLAUDE)
    assert sent.body == {name: value for name, value in body.items() if name != "mode"}
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert response.headers["x-neuroapi-betas-dropped"] == "files-api-2025-04-14"
    answer = json.loads(response.content, parse_float=Decimal)
    assert answer["type"] == "message" and answer["usage"]["cost_units"] > 0
    assert Decimal(response.headers["x-neuroapi-cost-units"]) == answer["usage"]["cost_units"]
