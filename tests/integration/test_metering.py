"""Metering on the real gateway: every call gets exactly one record with the fields the
Security & data page lists (and no text), the caller sees its exact price, monthly counters
lose nothing and count nothing twice, even while Redis stops taking writes, and a caller who
leaves mid-stream is billed for what it received."""

import asyncio
import json
import secrets
import time
from decimal import Decimal

import httpx
import redis.asyncio as aioredis

from tests.support.gateway_client import caller_address, records_for
from tests.support.upstreams import Behaviour

RECORD_FIELDS = {"request_id", "timestamp_ms", "key_prefix", "account_id", "status", "mode", "backend", "model",
                 "prompt_tokens", "completion_tokens", "estimated", "cost_micro_units", "request_bytes",
                 "response_bytes", "finetune", "endpoint"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def account_and_key(client) -> tuple[str, str]:
    email = f"meter-{secrets.token_hex(4)}@example.com"
    credentials = {"email": email, "password": "a long enough password"}
    assert (await client.post("/v1/auth/signup", json=credentials)).status_code == 201
    token = (await client.post("/v1/auth/login", json=credentials)).json()["token"]
    return token, (await client.post("/v1/keys", json={"name": "m"}, headers=bearer(token))).json()["key"]


async def test_a_call_gets_one_exact_record_and_its_price(client, gateway, api_key):
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello gateway"}]})
    response = await client.post("/v1/chat/completions", content=body, headers={
        **bearer(api_key), "Content-Type": "application/json"})
    assert response.status_code == 200
    # gpt-4o-mini: 150000 / 600000 cost_units per million tokens; the fake counts 2 + 3 tokens.
    assert response.headers["x-neuroapi-cost-units"] == "2.1"
    assert json.loads(response.content, parse_float=Decimal)["usage"]["cost_units"] == Decimal("2.1")
    request_id = response.headers["x-request-id"]
    record = (await records_for(gateway, [request_id]))[request_id]
    assert set(record) == RECORD_FIELDS
    assert record | {"timestamp_ms": "0", "account_id": ""} == {
        "request_id": request_id, "timestamp_ms": "0", "key_prefix": api_key[:14], "account_id": "",
        "status": "200", "mode": "", "backend": "openai", "model": "gpt-4o-mini", "prompt_tokens": "2",
        "completion_tokens": "3", "estimated": "0", "cost_micro_units": "2100000",
        "request_bytes": str(len(body)), "response_bytes": str(len(response.content)), "finetune": "",
        "endpoint": "/v1/chat/completions",
    }
    assert abs(int(record["timestamp_ms"]) / 1000 - time.time()) < 60


async def test_streams_errors_and_rejections_are_recorded_too(client, gateway, api_key, upstreams):
    calls = [
        (bearer(api_key), {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                           "stream_options": {"include_usage": True}}),
        (bearer(api_key), {"model": "gpt-4o-mini", "messages": []}),  # 400
        ({}, {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}),  # 401: no key known
        (bearer(api_key), {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),  # 502
    ]
    responses = []
    for n, (headers, body) in enumerate(calls):
        if n == 3:  # scripted only now: "fast" above may have drawn gpt-4o-mini
            upstreams.script("gpt-4o-mini", Behaviour(status=500))
        responses.append(await client.post("/v1/chat/completions", json=body, headers=headers))
    assert [r.status_code for r in responses] == [200, 400, 401, 502]
    streamed_usage = [json.loads(line[6:], parse_float=Decimal) for line in responses[0].text.split("\n\n")
                      if line.startswith("data: {") and '"choices": []' in line]
    assert len(streamed_usage) == 1 and streamed_usage[0]["usage"]["cost_units"] > 0
    ids = [r.headers["x-request-id"] for r in responses]
    records = await records_for(gateway, ids)
    stream, bad, anonymous, failed = (records[i] for i in ids)
    assert (stream["status"], stream["mode"], stream["estimated"]) == ("200", "fast", "0")
    assert int(stream["cost_micro_units"]) == streamed_usage[0]["usage"]["cost_units"] * 1_000_000
    assert int(stream["response_bytes"]) == len(responses[0].content)
    assert (bad["status"], bad["key_prefix"], bad["backend"]) == ("400", api_key[:14], "")
    assert (anonymous["status"], anonymous["key_prefix"], anonymous["account_id"]) == ("401", "", "")
    assert (failed["status"], failed["backend"], failed["cost_micro_units"]) == ("502", "openai", "0")


async def test_monthly_counters_equal_the_calls_made_even_while_redis_refuses_writes(client, gateway):
    token, key = await account_and_key(client)
    admin = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    made, prompt_tokens, completion_tokens = 0, 0, 0

    async def call(n: int) -> None:
        nonlocal made, prompt_tokens, completion_tokens
        response = await client.post("/v1/chat/completions", headers=bearer(key), json={
            "model": "cheap" if n % 2 else "gpt-4o-mini", "messages": [{"role": "user", "content": "count me"}]})
        assert response.status_code == 200
        made += 1
        prompt_tokens += response.json()["usage"]["prompt_tokens"]
        completion_tokens += response.json()["usage"]["completion_tokens"]

    for n in range(20):
        await call(n)
    await admin.execute_command("CLIENT", "PAUSE", "2500", "WRITE")  # Redis stops taking writes
    for n in range(20, 50):
        await call(n)
    await asyncio.sleep(3)
    for n in range(50, 60):
        await call(n)
    await admin.aclose()

    deadline = time.monotonic() + 30
    while True:
        usage = (await client.get("/v1/usage", headers=bearer(token))).json()
        month = usage["data"][0]
        if month["requests"] >= made or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert month["requests"] == made == 60
    assert month["by_mode"]["cheap"]["requests"] == 30 and month["by_mode"]["(model)"]["requests"] == 30
    assert (month["prompt_tokens"], month["completion_tokens"]) == (prompt_tokens, completion_tokens)
    assert Decimal(month["cost_units"]) == Decimal(month["cost_micro_units"]) / 1_000_000
    assert usage["data"][1]["requests"] == 0  # last month
    by_key = (await client.get("/v1/usage", headers=bearer(key))).json()
    assert by_key["data"] == usage["data"] and by_key["budgets"]["account"] == usage["budgets"]["account"]
    assert "key" not in usage["budgets"] and by_key["budgets"]["key"]["prefix"] == key[:14]  # and its own limits


async def test_a_caller_leaving_mid_stream_is_billed_for_what_it_received(gateway, api_key, upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(tokens=200, gap_s=0.02))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"X-Forwarded-For": caller_address()}) as http:
        async with http.stream("POST", "/v1/chat/completions", headers=bearer(api_key), json={
                "model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": "a long answer please"}]}) as response:
            request_id = response.headers["x-request-id"]
            received = 0
            async for piece in response.aiter_raw():
                received += piece.count(b"\n\n")
                if received >= 20:
                    break
    record = (await records_for(gateway, [request_id]))[request_id]
    assert record["estimated"] == "1" and record["status"] == "200"
    assert 10 <= int(record["completion_tokens"]) < 150  # about what arrived, not the 200 asked for
    assert int(record["cost_micro_units"]) > 0
    [upstream] = upstreams.for_model("gpt-4o-mini")
    for _ in range(50):
        if upstream.closed_at is not None:
            break
        await asyncio.sleep(0.1)
    assert upstream.closed_at is not None  # the upstream request was cancelled
