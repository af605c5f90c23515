"""The whole application on real Ray Serve, a real redis-server and fake providers."""

import asyncio
import json
import re
import uuid

import pytest

from core.sse import SSEDecoder
from tests.support.gateway_client import mint_key
from tests.support.upstreams import Behaviour

MESSAGES = [{"role": "user", "content": "hello gateway"}]
# The catalog price of 2 prompt + 3 completion tokens, in cost_units.
COST_OF = {"gpt-4o-mini": 2.1, "deepseek-chat": 1.82, "claude-haiku-4-5": 17}
TIMING = re.compile(r"gateway;dur=[\d.]+, upstream;dur=[\d.]+")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sse_chunks(raw: bytes) -> list:
    return [e.data for e in SSEDecoder().feed(raw)]


def streamed_text(chunks: list[str]) -> str:
    payloads = [json.loads(c) for c in chunks if c != "[DONE]"]
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices"))


def assert_request_id(response) -> None:
    uuid.UUID(response.headers["x-request-id"])  # random, and nothing else


@pytest.mark.parametrize("model, provider", [
    ("gpt-4o-mini", "openai"), ("deepseek-chat", "deepseek"), ("claude-haiku-4-5", "anthropic"),
])
async def test_non_streamed_completion_from_each_provider(client, api_key, upstreams, model, provider):
    response = await client.post("/v1/chat/completions", headers=auth(api_key),
                                 json={"model": model, "messages": MESSAGES, "max_tokens": 20})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion" and answer["model"] == model
    assert answer["choices"][0]["message"]["content"] == "Echo: hello gateway "
    assert answer["usage"]["completion_tokens"] == 3
    assert TIMING.fullmatch(response.headers["server-timing"])
    assert_request_id(response)
    assert [r.provider for r in upstreams.requests] == [provider]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "deepseek-chat", "claude-haiku-4-5"])
@pytest.mark.parametrize("include_usage", [False, True])
async def test_streamed_completion_from_each_provider(client, api_key, upstreams, model, include_usage):
    body = {"model": model, "messages": MESSAGES, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = await client.post("/v1/chat/completions", headers=auth(api_key), json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert TIMING.fullmatch(response.headers["server-timing"])
    chunks = sse_chunks(response.content)
    assert chunks[-1] == "[DONE]"
    assert streamed_text(chunks) == "Echo: hello gateway "
    usage = [json.loads(c)["usage"] for c in chunks[:-1] if not json.loads(c)["choices"]]
    priced = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5, "cost_units": COST_OF[model]}
    # Token details (cached, reasoning) come along as the provider reports them.
    assert [{name: u[name] for name in priced} for u in usage] == ([priced] if include_usage else [])


async def test_a_mode_routes_to_its_candidates(client, api_key, upstreams):
    response = await client.post("/v1/chat/completions", headers=auth(api_key),
                                 json={"model": "cheap", "messages": MESSAGES})
    assert response.status_code == 200 and response.json()["model"] == "deepseek-chat"
    response = await client.post("/v1/chat/completions", headers=auth(api_key),
                                 json={"model": "claude-haiku-4-5", "mode": "fast", "messages": MESSAGES})
    assert response.status_code == 200 and response.json()["model"] == "claude-haiku-4-5"


@pytest.mark.parametrize("stream", [False, True])
async def test_falls_back_to_the_next_candidate_before_the_first_byte(client, api_key, upstreams, stream):
    upstreams.script("deepseek-chat", Behaviour(status=503))
    response = await client.post("/v1/chat/completions", headers=auth(api_key),
                                 json={"model": "cross-provider", "messages": MESSAGES, "stream": stream})
    assert response.status_code == 200
    text = streamed_text(sse_chunks(response.content)) if stream else response.json()["choices"][0]["message"]["content"]
    assert text == "Echo: hello gateway "
    assert [r.provider for r in upstreams.requests] == ["deepseek", "anthropic"]


async def test_falls_back_when_an_upstream_refuses_connections(client, api_key, upstreams):
    response = await client.post("/v1/chat/completions", headers=auth(api_key),
                                 json={"model": "resilient", "messages": MESSAGES})
    assert response.status_code == 200 and response.json()["model"] == "gpt-4o-mini"


async def test_when_every_candidate_fails_the_caller_gets_a_502(client, api_key, upstreams):
    upstreams.script("deepseek-chat", Behaviour(status=500))
    upstreams.script("claude-haiku-4-5", Behaviour(status=529))
    response = await client.post("/v1/chat/completions", headers=auth(api_key),
                                 json={"model": "cross-provider", "messages": MESSAGES})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert_request_id(response)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
async def test_an_upstream_failure_mid_stream_ends_with_an_error_event(client, api_key, upstreams, model):
    upstreams.script(model, Behaviour(mid_stream_error=True))
    response = await client.post("/v1/chat/completions", headers=auth(api_key), json={
        "model": model, "stream": True, "messages": [{"role": "user", "content": "one two three four"}]})
    assert response.status_code == 200
    chunks = sse_chunks(response.content)
    assert "[DONE]" not in chunks
    assert json.loads(chunks[-1])["error"]["type"] == "server_error"
    assert streamed_text(chunks[:-1]) == "Echo: one "


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"},
    {"Authorization": "Bearer neuro_abcdefgh_" + "A" * 38},
    {"Authorization": "Bearer sk-not-ours"},
])
async def test_missing_or_bad_keys_are_401_in_openai_shape(client, upstreams, headers):
    response = await client.post("/v1/chat/completions", headers=headers, json={"model": "fast", "messages": MESSAGES})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert_request_id(response)
    assert upstreams.requests == []


async def test_a_wrong_secret_with_a_valid_prefix_never_rides_a_cached_success(client, api_key, gateway):
    ok = await client.post("/v1/chat/completions", headers=auth(api_key), json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert ok.status_code == 200  # the key is now cached in the ingress
    other = await mint_key(gateway)
    forged = api_key.rsplit("_", 1)[0] + "_" + other.rsplit("_", 1)[1]  # right prefix, wrong secret
    response = await client.post("/v1/chat/completions", headers=auth(forged), json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert response.status_code == 401


async def test_anthropic_style_x_api_key_header_is_accepted(client, api_key):
    response = await client.post("/v1/chat/completions", headers={"x-api-key": api_key},
                                 json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert response.status_code == 200


@pytest.mark.parametrize("content, status, code", [
    (b"{not json", 400, "invalid_json"),
    (json.dumps({"model": "fast", "messages": MESSAGES, "tools": []}).encode(), 400, "invalid_value"),
    (json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "store": True}).encode(), 400, "invalid_value"),
    (json.dumps({"model": "deepseek-chat", "messages": MESSAGES,
                 "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}).encode(),
     400, "unsupported_parameter"),
    (json.dumps({"model": "claude-haiku-4-5", "messages": MESSAGES, "seed": 1}).encode(), 400, "unsupported_parameter"),
    (json.dumps({"model": "no-such-model", "messages": MESSAGES}).encode(), 404, "model_not_found"),
    # A chat body may be 20 MiB (max_chat_body_bytes: base64 images); one byte more is refused.
    (json.dumps({"model": "fast", "messages": [{"role": "user", "content": "x" * (20 * 1024 * 1024)}]}).encode(),
     413, "request_too_large"),
])
async def test_bad_requests_get_clear_errors_and_reach_no_upstream(client, api_key, upstreams, content, status, code):
    response = await client.post("/v1/chat/completions", headers={**auth(api_key), "content-type": "application/json"},
                                 content=content)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    assert_request_id(response)
    assert upstreams.requests == []


async def test_unknown_routes_and_methods_answer_in_openai_shape(client):
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405)):
        response = await client.request(method, path)
        assert response.status_code == status
        assert response.json()["error"]["message"]
        assert_request_id(response)


async def test_models_lists_the_modes_and_models_this_key_may_use(client, api_key):
    response = await client.get("/v1/models", headers=auth(api_key))
    assert response.status_code == 200
    ids = {m["id"] for m in response.json()["data"]}
    assert {"fast", "cheap", "resilient", "gpt-4o-mini", "claude-haiku-4-5", "deepseek-chat"} <= ids
    assert (await client.get("/v1/models")).status_code == 401


async def test_a_callers_request_id_is_replaced_by_a_random_one(client, api_key):
    response = await client.post("/v1/chat/completions", headers={**auth(api_key), "X-Request-Id": api_key},
                                 json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert response.status_code == 200
    assert api_key not in response.headers["x-request-id"]
    assert len(response.headers.get_list("x-request-id")) == 1
    assert_request_id(response)


async def test_healthz_needs_no_key(client):
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert_request_id(response)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
async def test_a_caller_leaving_mid_stream_closes_the_upstream_request(client, api_key, upstreams, model):
    import asyncio
    upstreams.script(model, Behaviour(tokens=500, gap_s=0.02))  # a 10 s answer
    async with client.stream("POST", "/v1/chat/completions", headers=auth(api_key),
                             json={"model": model, "stream": True, "messages": MESSAGES}) as response:
        async for _ in response.aiter_raw():
            break  # the caller reads the first bytes, then goes away
    left = asyncio.get_running_loop().time()
    while upstreams.requests[-1].closed_at is None and asyncio.get_running_loop().time() - left < 5:
        await asyncio.sleep(0.05)
    assert upstreams.requests[-1].closed_at is not None, "the upstream kept streaming to nobody"


def gateway_ms_count(metrics: str, stream: str) -> float:
    """Requests counted by the ``neuroapi_gateway_added_ms`` histogram, from Prometheus text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("ray_neuroapi_gateway_added_ms_count{") and f'stream="{stream}"' in line)


async def test_the_gateways_own_time_per_request_is_a_prometheus_metric(client, api_key, gateway):
    from serve_app import runtime

    async def counted() -> tuple[float, float]:
        metrics = (await client.get(runtime.metrics_url())).text
        return gateway_ms_count(metrics, "false"), gateway_ms_count(metrics, "true")

    before, previous = await counted(), None
    while before != previous:  # earlier tests' requests may still be on their way to the exporter
        await asyncio.sleep(2.5)
        before, previous = await counted(), before
    for stream in (False, False, True):
        response = await client.post("/v1/chat/completions", headers=auth(api_key),
                                     json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream})
        assert response.status_code == 200
    for _ in range(120):  # Ray's metrics agent exports on an interval (1 s in the tests)
        now = await counted()
        if now[0] >= before[0] + 2 and now[1] >= before[1] + 1:
            break
        await asyncio.sleep(0.5)
    assert (now[0] - before[0], now[1] - before[1]) == (2, 1)
