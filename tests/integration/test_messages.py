"""``POST /v1/messages`` over plain HTTP on the session's gateway: a mode whose candidates are a
translated backend and Claude (the caller's own body), fallback between them, scopes, metering
that names the endpoint, and Anthropic's error shape."""

import json
from decimal import Decimal

from tests.support.gateway_client import account_with_key, records_for, set_scope
from tests.support.named_events import named_events
from tests.support.upstreams import Behaviour

ASK = [{"role": "user", "content": "one two three"}]


def anthropic_headers(key: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": "2023-06-01"}


async def test_a_mode_translates_for_deepseek_and_falls_back_to_claude_with_the_callers_own_body(
        client, api_key, upstreams):
    body = {"model": "cross-provider", "max_tokens": 32, "messages": ASK}
    first = await client.post("/v1/messages", json=body, headers=anthropic_headers(api_key))
    assert first.status_code == 200, first.text
    assert (first.json()["model"], first.json()["content"][0]["text"].strip()) == ("deepseek-chat", "Echo: one two three")
    assert upstreams.requests[-1].provider == "deepseek" and upstreams.requests[-1].body["messages"] == ASK

    upstreams.script("deepseek-chat", Behaviour(status=503))
    fallback = await client.post("/v1/messages", json={**body, "stream": True}, headers=anthropic_headers(api_key))
    events = named_events(fallback.text)
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"  # Anthropic's events, as sent
    assert events[0][1]["message"]["model"] == "claude-haiku-4-5"
    claude = upstreams.requests[-1]
    assert claude.provider == "anthropic"
    assert claude.body == {**body, "model": "claude-haiku-4-5", "stream": True}
    [delta] = [data for kind, data in events if kind == "message_delta"]
    assert delta["usage"]["cost_units"] > 0  # priced, in Anthropic's own event

    translated = await client.post("/v1/messages", json={**body, "stream": True}, headers=anthropic_headers(api_key))
    kinds = [kind for kind, _ in named_events(translated.text)]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"] and kinds[-2:] == ["message_delta", "message_stop"]

    # top_k only Claude honours: the mode's DeepSeek candidate is skipped, not sent a lossy request.
    upstreams.reset()
    only_claude = await client.post("/v1/messages", json={**body, "top_k": 5}, headers=anthropic_headers(api_key))
    assert only_claude.status_code == 200 and [r.provider for r in upstreams.requests] == ["anthropic"]
    refused = await client.post("/v1/messages", json={**body, "model": "deepseek-chat", "top_k": 5},
                                headers=anthropic_headers(api_key))
    assert refused.status_code == 400 and "top_k" in refused.json()["error"]["message"]


async def test_calls_are_metered_with_their_endpoint_and_exact_price(client, gateway, api_key):
    answers = [
        await client.post("/v1/messages", json={"model": model, "max_tokens": 16, "messages": ASK},
                          headers=anthropic_headers(api_key))
        for model in ("claude-haiku-4-5", "gpt-4o-mini")]
    count = await client.post("/v1/messages/count_tokens", json={"model": "claude-haiku-4-5", "messages": ASK},
                              headers=anthropic_headers(api_key))
    assert [a.status_code for a in answers] == [200, 200] and count.json() == {"input_tokens": 3}
    ids = [a.headers["x-request-id"] for a in [*answers, count]]
    records = await records_for(gateway, ids)
    for answer in answers:
        record = records[answer.headers["x-request-id"]]
        cost = json.loads(answer.content, parse_float=Decimal)["usage"]["cost_units"]
        assert record["endpoint"] == "/v1/messages" and Decimal(record["cost_micro_units"]) == cost * 1_000_000 > 0
        assert Decimal(answer.headers["x-neuroapi-cost-units"]) == cost
    counted = records[count.headers["x-request-id"]]
    assert (counted["endpoint"], counted["cost_micro_units"]) == ("/v1/messages/count_tokens", "0")


async def test_scopes_hold_and_errors_come_in_anthropics_shape(client, gateway, upstreams):
    email, key = await account_with_key(client)
    await set_scope(client, gateway, email, in_house_only=True)
    refused = await client.post("/v1/messages", json={"model": "claude-haiku-4-5", "max_tokens": 8, "messages": ASK},
                                headers=anthropic_headers(key))
    assert refused.status_code == 403
    assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "permission_error"
    counted = await client.post("/v1/messages/count_tokens", json={"model": "claude-haiku-4-5", "messages": ASK},
                                headers=anthropic_headers(key))
    assert counted.status_code == 403
    private = await client.post("/v1/messages", json={"model": "private", "max_tokens": 8, "messages": ASK},
                                headers={"Authorization": f"Bearer {key}"})  # Bearer works too
    assert private.status_code == 200 and private.json()["model"] == "smollm2-135m-instruct"
    assert upstreams.requests == []
    no_key = await client.post("/v1/messages", json={"model": "claude-haiku-4-5", "max_tokens": 8, "messages": ASK})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    malformed = await client.post("/v1/messages", content=b"{not json", headers=anthropic_headers(key))
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"
