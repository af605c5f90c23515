"""Fallback and relay rules, over real provider clients (fake upstreams), without Ray."""

import json

import pytest

from core.backend import UpstreamCall
from core.errors import GatewayError
from serve_app.endpoints.chat.fallback import Outcome, complete_chat, open_chat_stream
from tests.support.chat_backends import CALL, ORDER, DirectBackends
from tests.support.upstreams import Behaviour


@pytest.mark.parametrize("status", [503, 429])
async def test_non_streamed_call_falls_back_after_a_retriable_failure(upstreams, status):
    upstreams.script("deepseek-chat", Behaviour(status=status))
    outcome = Outcome()
    completion = await complete_chat(DirectBackends(upstreams), ORDER, CALL, outcome)
    assert json.loads(completion.body)["model"] == "claude-haiku-4-5"
    assert outcome.backend.provider == "anthropic"
    assert [r.provider for r in upstreams.requests] == ["deepseek", "anthropic"]


async def test_a_bad_request_is_not_retried_elsewhere(upstreams):
    upstreams.script("deepseek-chat", Behaviour(status=400))
    with pytest.raises(GatewayError) as error:
        await complete_chat(DirectBackends(upstreams), ORDER, CALL, Outcome())
    assert error.value.status == 400
    assert [r.provider for r in upstreams.requests] == ["deepseek"]


async def test_when_every_candidate_fails_the_last_failure_is_returned(upstreams):
    upstreams.script("deepseek-chat", Behaviour(status=503))
    upstreams.script("claude-haiku-4-5", Behaviour(status=429))
    with pytest.raises(GatewayError) as error:
        await complete_chat(DirectBackends(upstreams), ORDER, CALL, Outcome())
    assert error.value.status == 429


async def test_stream_falls_back_before_the_first_byte(upstreams):
    upstreams.script("deepseek-chat", Behaviour(status=502))
    body = b"".join([piece async for piece in await open_chat_stream(DirectBackends(upstreams), ORDER, CALL, Outcome())])
    assert b"claude-haiku-4-5" in body and body.endswith(b"data: [DONE]\n\n")


async def test_stream_failure_after_the_first_byte_sends_an_error_event_and_no_done(upstreams):
    upstreams.script("deepseek-chat", Behaviour(mid_stream_error=True))
    outcome = Outcome()
    events = await open_chat_stream(DirectBackends(upstreams), ORDER, UpstreamCall(
        "r", "", {"messages": [{"role": "user", "content": "a b c d e f"}]}, False), outcome)
    body = b"".join([piece async for piece in events])
    last = body.strip().split(b"\n\n")[-1]
    assert json.loads(last.removeprefix(b"data: "))["error"]["code"] == "upstream_error"
    assert b"[DONE]" not in body
    assert outcome.error is not None
    assert [r.provider for r in upstreams.requests] == ["deepseek"]  # never restarted elsewhere
