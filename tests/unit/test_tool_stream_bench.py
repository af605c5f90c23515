"""The tool-call benchmark's fake upstream speaks both providers' real stream shapes: each event
parses as the official SDK's type, and the tool call's arguments reassemble into the JSON sent."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest
from openai.types.chat import ChatCompletionChunk
from pydantic import TypeAdapter

from benchmarks import tool_upstream
from benchmarks.tool_stream import ANTHROPIC_REQUEST, OPENAI_REQUEST, anthropic_arguments, openai_arguments

ANTHROPIC_HEADERS = {"x-api-key": tool_upstream.ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"Authorization": f"Bearer {tool_upstream.OPENAI_KEY}"}


@pytest.fixture
async def upstream():
    transport = httpx.ASGITransport(app=tool_upstream.build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        yield client


def _data_lines(body: str) -> list[str]:
    return [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_the_openai_stream_is_one_tool_call_in_sdk_chunks(upstream, include_usage):
    request = {**OPENAI_REQUEST, "stream_options": {"include_usage": include_usage}}
    answer = await upstream.post("/v1/chat/completions", json=request, headers=OPENAI_HEADERS)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    *events, done = _data_lines(answer.text)
    assert done == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(event) for event in events]
    calls = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert calls[0].id and calls[0].function.name == "get_weather" and {c.index for c in calls} == {0}
    assert len(calls) == tool_upstream.FRAGMENTS + 1
    arguments = "".join(call.function.arguments or "" for call in calls)
    assert json.loads(arguments)["city"] == "San Francisco" and arguments == tool_upstream.ARGUMENTS
    assert "".join(filter(None, map(openai_arguments, map(json.loads, events)))) == arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert (chunks[-1].usage is not None) == include_usage


async def test_the_anthropic_stream_is_one_tool_use_block_in_sdk_events(upstream):
    answer = await upstream.post("/v1/messages", json=ANTHROPIC_REQUEST, headers=ANTHROPIC_HEADERS)
    assert answer.status_code == 200
    names = [line.removeprefix("event: ") for line in answer.text.splitlines() if line.startswith("event: ")]
    parse = TypeAdapter(anthropic.types.RawMessageStreamEvent).validate_json
    events = [parse(data) for data in _data_lines(answer.text)]
    assert names == [event.type for event in events]
    assert names[:2] == ["message_start", "content_block_start"] and names[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    block = events[1].content_block
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {}
    pieces = [e.delta.partial_json for e in events if e.type == "content_block_delta"
              and e.delta.type == "input_json_delta"]
    assert len(pieces) == tool_upstream.FRAGMENTS
    assert json.loads("".join(pieces)) == json.loads(tool_upstream.ARGUMENTS)
    seen = [anthropic_arguments(json.loads(data)) for data in _data_lines(answer.text)]
    assert [piece for piece in seen if piece is not None] == pieces
    assert events[-2].delta.stop_reason == "tool_use"


async def test_the_fake_refuses_what_the_real_apis_refuse(upstream):
    """A gateway that lost the key, the version header or the tools fails the benchmark."""
    no_tools = {k: v for k, v in OPENAI_REQUEST.items() if k != "tools"}
    chat, messages = "/v1/chat/completions", "/v1/messages"
    assert (await upstream.post(chat, json=OPENAI_REQUEST)).status_code == 401
    assert (await upstream.post(chat, json=no_tools, headers=OPENAI_HEADERS)).status_code == 400
    unversioned = {"x-api-key": tool_upstream.ANTHROPIC_KEY}
    assert (await upstream.post(messages, json=ANTHROPIC_REQUEST, headers=unversioned)).status_code == 400
    wrong_key = {**ANTHROPIC_HEADERS, "x-api-key": "sk-ant-other"}
    answer = await upstream.post(messages, json=ANTHROPIC_REQUEST, headers=wrong_key)
    assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
