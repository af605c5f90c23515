"""Upstream faults on the real gateway (issue 13, items 6 and 8): hung, silent and malformed
upstreams reach the caller as 502/504 in OpenAI's error shape (or an error event once the
stream has started), a mode's next candidate serves instead, and every call is metered.

The ``faulty`` test provider is the fake OpenAI API under the model ``faulty-gpt`` with a
1 s first-byte and idle bound (tests/conftest.py); the ``faulty-first`` mode falls back from
it to gpt-4o-mini."""

import json

import pytest

from tests.conftest import FAULTY_MODEL
from tests.support.gateway_client import records_for
from tests.support.upstreams import Behaviour

MESSAGES = [{"role": "user", "content": "hello gateway"}]
HANG = Behaviour(delay_s=20)  # far past the faulty provider's 1 s first-byte bound


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sse(*events) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in events)


GOOD_CHUNK = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": FAULTY_MODEL,
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}).encode()
# What the issue sent, each a 200 from the upstream.
MALFORMED = {
    "empty object": (False, Behaviour(raw=b"{}")),
    "unknown fields": (False, Behaviour(raw=b'{"surprise": [1, 2, 3]}')),
    "integer content without usage": (False, Behaviour(raw=json.dumps({"choices": [
        {"index": 0, "message": {"role": "assistant", "content": 12345}, "finish_reason": "stop"}]}).encode())),
    "a 60 MB body": (False, Behaviour(body_bytes=60 << 20)),
    "first event a list": (True, Behaviour(raw=sse(b"[1]", b"[DONE]"))),
    "first event a string": (True, Behaviour(raw=sse(b'"hello"', b"[DONE]"))),
    "an integer delta": (True, Behaviour(raw=sse(b'{"choices": [{"index": 0, "delta": 5}]}', b"[DONE]"))),
    "a 30 MB SSE line": (True, Behaviour(body_bytes=30 << 20)),
}


async def ask(client, key: str, model: str, stream: bool):
    return await client.post("/v1/chat/completions", headers=auth(key),
                             json={"model": model, "messages": MESSAGES, "stream": stream})


def assert_error_shape(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (code, "server_error")
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_answer_is_a_metered_502_in_our_words(gateway, client, api_key, upstreams, case):
    stream, behaviour = MALFORMED[case]
    upstreams.script(FAULTY_MODEL, behaviour)
    response = await ask(client, api_key, FAULTY_MODEL, stream)
    assert_error_shape(response, 502, "upstream_error")
    assert "unreadable" in response.json()["error"]["message"] or "larger" in response.json()["error"]["message"]
    request_id = response.headers["x-request-id"]
    record = (await records_for(gateway, [request_id]))[request_id]
    assert (record["status"], record["model"]) == ("502", FAULTY_MODEL)


async def test_an_openai_shaped_body_from_the_anthropic_upstream_is_a_502(gateway, client, api_key, upstreams):
    upstreams.script("claude-haiku-4-5", Behaviour(raw=json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1}}).encode()))
    response = await ask(client, api_key, "claude-haiku-4-5", stream=False)
    assert_error_shape(response, 502, "upstream_error")
    request_id = response.headers["x-request-id"]
    assert (await records_for(gateway, [request_id]))[request_id]["status"] == "502"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["hung before headers", "keep-alives only", "malformed"])
async def test_a_mode_falls_back_past_a_faulty_candidate(gateway, client, api_key, upstreams, stream, fault):
    behaviour = {"hung before headers": HANG, "keep-alives only": Behaviour(comments_only=True),
                 "malformed": Behaviour(raw=sse(b"[1]") if stream else b"{}")}[fault]
    if fault == "keep-alives only" and not stream:
        behaviour = HANG  # a plain call has no keep-alives: the same as hung
    upstreams.script(FAULTY_MODEL, behaviour)
    response = await ask(client, api_key, "faulty-first", stream)
    assert response.status_code == 200, response.text
    if stream:
        assert b"gpt-4o-mini" in response.content and response.content.endswith(b"data: [DONE]\n\n")
    else:
        assert response.json()["model"] == "gpt-4o-mini"
    assert [r.body["model"] for r in upstreams.requests] == [FAULTY_MODEL, "gpt-4o-mini"]
    request_id = response.headers["x-request-id"]
    record = (await records_for(gateway, [request_id]))[request_id]
    assert (record["status"], record["model"]) == ("200", "gpt-4o-mini")


async def test_a_stream_that_goes_quiet_ends_with_an_error_event_not_done(gateway, client, api_key, upstreams):
    upstreams.script(FAULTY_MODEL, Behaviour(stall_after=2))  # two tokens, then only `: ping`
    response = await ask(client, api_key, FAULTY_MODEL, stream=True)
    assert response.status_code == 200
    assert b"[DONE]" not in response.content
    last = json.loads(response.content.strip().split(b"\n\n")[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "upstream_timeout"
    assert b"Echo:" in response.content  # what arrived before the silence was relayed
    request_id = response.headers["x-request-id"]
    record = (await records_for(gateway, [request_id]))[request_id]
    assert record["model"] == FAULTY_MODEL and int(record["completion_tokens"]) > 0


async def test_the_gateway_serves_normally_afterwards(client, api_key, upstreams):
    response = await ask(client, api_key, FAULTY_MODEL, stream=False)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
