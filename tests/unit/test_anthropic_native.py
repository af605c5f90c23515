"""A /v1/messages caller's own body to a Claude model, and Anthropic's own answer back: the
provider client against the fake Anthropic API (no Ray), the error shape the SDK reads, and the
``anthropic-beta`` features that pass."""

from __future__ import annotations

import json

import anthropic
import httpx2  # the anthropic SDK's own HTTP client package
import pytest

from actors.providers.anthropic_api import split_betas
from actors.providers.client import ProviderClient
from config.settings import load_settings
from core.backend import StreamEnd, StreamStart, UpstreamCall, UpstreamFailure
from core.errors import GatewayError
from serve_app.endpoints.messages.errors import anthropic_error_response
from tests.support.named_events import named_events
from tests.support.provider_clients import client_for

BODY = {"model": "claude-haiku-4-5", "max_tokens": 64, "temperature": 0.5, "top_k": 3,
        "metadata": {"user_id": "u-1"}, "messages": [{"role": "user", "content": "one two three"}]}


def priced_client(upstreams, provider: str) -> ProviderClient:
    return ProviderClient(client_for(upstreams, provider).adapter, load_settings().prices)


def native_call(**more) -> UpstreamCall:
    return UpstreamCall("req-1", "claude-haiku-4-5", {}, native=dict(BODY), **more)


async def test_the_callers_body_reaches_anthropic_unchanged_and_the_answer_comes_back_priced(upstreams):
    client = priced_client(upstreams, "anthropic")
    completion = await client.complete(native_call(native_betas=("interleaved-thinking-2025-05-14",)))
    [sent] = upstreams.requests
    assert sent.body == BODY and sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    message = json.loads(completion.body)
    assert message["type"] == "message" and message["content"][0]["text"].strip() == "Echo: one two three"
    assert message["usage"]["input_tokens"] == completion.usage.prompt_tokens == 3
    assert message["usage"]["cost_units"] > 0
    anthropic.types.Message.model_validate(message)  # still Anthropic's message


async def test_a_stream_is_relayed_event_for_event_with_the_price_in_message_delta(upstreams):
    client = priced_client(upstreams, "anthropic")
    pieces, end = b"", None
    async for item in client.stream(native_call()):
        if isinstance(item, StreamStart):
            pieces += item.first
        elif isinstance(item, bytes):
            pieces += item
        else:
            end = item
    assert isinstance(end, StreamEnd) and end.error is None and end.usage.prompt_tokens == 3
    events = named_events(pieces.decode())
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert all(kind == data["type"] for kind, data in events)
    assert events[-2][1]["usage"]["cost_units"] > 0
    assert upstreams.requests[-1].body == {**BODY, "stream": True}


async def test_anthropic_counts_the_tokens_of_the_callers_body(upstreams):
    count = {key: value for key, value in BODY.items() if key not in ("max_tokens", "temperature", "top_k", "metadata")}
    counted = await priced_client(upstreams, "anthropic").count_tokens(
        UpstreamCall("req-2", "claude-haiku-4-5", {}, native=count))
    assert counted == 3 and upstreams.requests[-1].path.endswith("/v1/messages/count_tokens")
    refused = await priced_client(upstreams, "openai").count_tokens(UpstreamCall("req-3", "gpt-4o-mini", {"messages": []}))
    assert isinstance(refused, UpstreamFailure) and refused.error.status == 400


def test_only_betas_that_change_nothing_but_the_answer_pass():
    passed, dropped = split_betas("interleaved-thinking-2025-05-14, files-api-2025-04-14,context-1m-2025-08-07,")
    assert passed == ("interleaved-thinking-2025-05-14",)
    assert dropped == ("files-api-2025-04-14", "context-1m-2025-08-07")


@pytest.mark.parametrize(("status", "sdk_error", "kind"), [
    (400, anthropic.BadRequestError, "invalid_request_error"), (401, anthropic.AuthenticationError, "authentication_error"),
    (403, anthropic.PermissionDeniedError, "permission_error"), (404, anthropic.NotFoundError, "not_found_error"),
    (429, anthropic.RateLimitError, "rate_limit_error"), (503, anthropic.OverloadedError, "overloaded_error"),
])
def test_errors_reach_the_sdk_as_its_own_types(status, sdk_error, kind):
    """NeuroAPI's 503 is Anthropic's 529 overloaded_error; Retry-After is kept."""
    error = GatewayError(status, "no", headers={"Retry-After": "2"} if status == 503 else None)
    response = anthropic_error_response(error, "req-9")

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(response.status_code, headers=dict(response.headers), content=response.body)

    client = anthropic.Anthropic(api_key="neuro_x", base_url="http://gateway", max_retries=0,
                                 http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))
    with pytest.raises(sdk_error) as raised:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body == {"type": "error", "error": {"type": kind, "message": "no"}, "request_id": "req-9"}
    if status == 503:
        assert raised.value.status_code == 529 and raised.value.response.headers["retry-after"] == "2"
