"""``POST /v1/generate``, NeuroAPI's own shape, over plain HTTP on the session's gateway: the
answer, its stream, a long history, metering that names the endpoint, scopes and errors."""

import json
from decimal import Decimal

from tests.support.gateway_client import account_with_key, bearer, records_for, set_scope
from tests.support.named_events import named_events
from tests.support.upstreams import Behaviour

# gpt-4o-mini's price: cost_units per million prompt / completion tokens (config/defaults/prices.yaml).
GPT_4O_MINI = (Decimal(150_000), Decimal(600_000))


def history(turns: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} words"} for i in range(turns)]


async def test_a_prompt_with_fifty_turns_of_history_is_answered_priced_and_metered(client, gateway, api_key, upstreams):
    body = {"prompt": "and now the question", "message_history": history(50), "model": "gpt-4o-mini",
            "system": "be brief", "max_tokens": 50}
    response = await client.post("/v1/generate", json=body, headers=bearer(api_key))
    assert response.status_code == 200, response.text
    answer = json.loads(response.content, parse_float=Decimal)
    assert (answer["text"].strip(), answer["model"], answer["mode"], answer["finish_reason"]) == (
        "Echo: and now the question", "gpt-4o-mini", None, "stop")
    usage = answer["usage"]
    price = (usage["prompt_tokens"] * GPT_4O_MINI[0] + usage["completion_tokens"] * GPT_4O_MINI[1]) / 1_000_000
    assert usage["cost_units"] == price == Decimal(response.headers["x-neuroapi-cost-units"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The whole conversation reached the model, in order, after the system prompt.
    sent = upstreams.requests[-1].body["messages"]
    assert [m["content"] for m in sent] == ["be brief", *(t["content"] for t in history(50)), "and now the question"]
    sent_body = upstreams.requests[-1].body
    assert sent_body.get("max_completion_tokens", sent_body.get("max_tokens")) == 50
    request_id = response.headers["x-request-id"]
    record = (await records_for(gateway, [request_id]))[request_id]
    assert (record["endpoint"], record["model"], record["status"]) == ("/v1/generate", "gpt-4o-mini", "200")
    assert Decimal(record["cost_micro_units"]) == price * 1_000_000


async def test_a_streamed_generation_sends_text_deltas_then_a_priced_done_event(client, gateway, api_key, upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(tokens=12))
    response = await client.post("/v1/generate", json={"prompt": "count", "mode": "fast", "model": "gpt-4o-mini",
                                                       "stream": True}, headers=bearer(api_key))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = named_events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds == ["delta"] * (len(events) - 1) + ["done"] and len(events) > 2
    done = events[-1][1]
    assert (done["mode"], done["model"], done["finish_reason"]) == ("fast", "gpt-4o-mini", "stop")
    text = "".join(data["text"] for _, data in events[:-1])
    assert len(text.split()) == 12
    usage = done["usage"]
    assert usage["cost_units"] == (usage["prompt_tokens"] * GPT_4O_MINI[0]
                                   + usage["completion_tokens"] * GPT_4O_MINI[1]) / 1_000_000
    request_id = response.headers["x-request-id"]
    record = (await records_for(gateway, [request_id]))[request_id]
    assert (record["endpoint"], record["mode"], record["estimated"]) == ("/v1/generate", "fast", "0")
    assert Decimal(record["cost_micro_units"]) == usage["cost_units"] * 1_000_000


async def test_a_failure_mid_stream_ends_with_an_error_event(client, api_key, upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(mid_stream_error=True))
    response = await client.post("/v1/generate", json={"prompt": "one two three four", "model": "gpt-4o-mini",
                                                       "stream": True}, headers=bearer(api_key))
    events = named_events(response.text)
    assert events[0][0] == "delta" and events[-1][0] == "error" and "done" not in [k for k, _ in events]
    assert events[-1][1]["error"]["type"] == "server_error"
    assert "".join(data["text"] for _, data in events[:-1]) == "Echo: one "


async def test_the_in_house_mode_serves_an_in_house_only_account_and_others_are_refused(client, gateway):
    email, key = await account_with_key(client)
    await set_scope(client, gateway, email, in_house_only=True)
    private = await client.post("/v1/generate", json={"prompt": "Say hello.", "mode": "private", "max_tokens": 8},
                                headers=bearer(key))
    assert private.status_code == 200, private.text
    assert (private.json()["model"], private.json()["mode"]) == ("smollm2-135m-instruct", "private")
    assert private.json()["text"]
    refused = await client.post("/v1/generate", json={"prompt": "hi", "mode": "fast"}, headers=bearer(key))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "scope_forbids"


async def test_bad_requests_are_refused_with_the_field_named(client, api_key):
    cases = [
        ({"prompt": "hi"}, "mode"),  # neither a mode nor a model
        ({"mode": "fast"}, "prompt"),
        ({"prompt": "hi", "mode": "fast", "message_history": [{"role": "tool", "content": "x"}]},
         "message_history.0.role"),
        ({"prompt": "hi", "mode": "fast", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "mode": "fast", "tools": []}, "tools"),
    ]
    for body, field in cases:
        response = await client.post("/v1/generate", json=body, headers=bearer(api_key))
        assert response.status_code == 400, (body, response.text)
        assert field in response.json()["error"]["message"], (body, response.text)
    unknown = await client.post("/v1/generate", json={"prompt": "hi", "mode": "no-such-mode"}, headers=bearer(api_key))
    assert unknown.status_code == 404
    no_key = await client.post("/v1/generate", json={"prompt": "hi", "mode": "fast"})
    assert no_key.status_code == 401
