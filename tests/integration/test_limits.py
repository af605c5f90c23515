"""A key's limits enforced on the session's gateway (its ingress replicas share them through
Redis): a budget that concurrent calls never overshoot, with refused calls sending nothing
upstream; requests per minute; OpenAI's rate-limit headers and error codes; the model allow-list
on every endpoint that calls a model."""

import asyncio
import json
import random
import secrets
from decimal import Decimal

import httpx
import redis.asyncio as aioredis

from actors.keys.limit_settings import LimitSettings
from actors.limits.store import LimitStore, Reserved
from core.limits import Limits
from tests.support.gateway_client import bearer, caller_address, mint_key, records_for


async def limited_key(gateway, limits: Limits) -> str:
    key = await mint_key(gateway)
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    try:
        _, confirmed = await LimitSettings(redis).set_ceiling(key[:14], limits, actor="test")
    finally:
        await redis.aclose()
    assert confirmed >= 2  # every ingress replica holds the change before it is used
    return key


async def post_all(gateway, key: str, bodies: list[dict], path: str = "/v1/chat/completions",
                   concurrency: int = 40) -> list[httpx.Response]:
    """Concurrent calls over several connections (so both ingress replicas take part)."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(body: dict) -> httpx.Response:
            async with gate:
                return await client.post(path, json=body, headers={**bearer(key), "X-Forwarded-For": caller_address()})
        return await asyncio.gather(*(one(body) for body in bodies))


async def test_concurrent_calls_never_overshoot_a_budget_and_refused_ones_send_nothing(gateway, upstreams):
    budget = Decimal(40)  # cost_units; gpt-4o-mini: 0.15 a prompt token, 0.6 a completion token
    key = await limited_key(gateway, Limits(key_budget_micro=int(budget * 1_000_000)))
    marker = "m" + secrets.token_hex(4)
    rng = random.Random(16)
    bodies = []
    for _ in range(240):
        words = rng.randint(1, 12)  # the fake answers "Echo: <the words>": words + 1 tokens
        bodies.append({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": " ".join([marker] * words)}],
                       "max_tokens": words + 1 + rng.randint(0, 40), "stream": rng.random() < 0.3,
                       "stream_options": {"include_usage": True}})
    for body in bodies:
        if not body["stream"]:
            del body["stream_options"]
    answers = await post_all(gateway, key, bodies)
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(served) + len(refused) == len(answers) and served and refused
    assert {a.json()["error"]["code"] for a in refused} == {"insufficient_quota"}
    assert all("budget" in a.json()["error"]["message"] for a in refused)
    # Every refused call was refused before anything was sent upstream.
    arrived = [r for r in upstreams.requests if marker in json.dumps(r.body)]
    assert len(arrived) == len(served)
    records = await records_for(gateway, [a.headers["x-request-id"] for a in served])
    spent = sum(int(r["cost_micro_units"]) for r in records.values())
    assert 0 < spent <= budget * 1_000_000


async def test_requests_per_minute_hold_across_replicas_with_openais_headers(gateway, upstreams):
    key = await limited_key(gateway, Limits(rpm=5, tpm=1_000_000))
    marker = "r" + secrets.token_hex(4)
    body = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": marker}]}
    answers = await post_all(gateway, key, [body] * 12)
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert (len(served), len(refused)) == (5, 7)
    assert len([r for r in upstreams.requests if marker in json.dumps(r.body)]) == 5
    for answer in answers:  # on every answer of a limited key, refused or not
        assert answer.headers["x-ratelimit-limit-requests"] == "5"
        assert answer.headers["x-ratelimit-limit-tokens"] == "1000000"
        assert {"x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens"} <= set(answer.headers)
    assert sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in served) == [0, 1, 2, 3, 4]
    for answer in refused:
        assert answer.json()["error"]["code"] == "rate_limit_exceeded" and int(answer.headers["retry-after"]) >= 1

    unlimited = await post_all(gateway, await mint_key(gateway), [body])
    assert unlimited[0].status_code == 200 and "x-ratelimit-limit-requests" not in unlimited[0].headers


async def test_the_allow_list_holds_on_every_endpoint_streamed_or_not(gateway, upstreams):
    key = await limited_key(gateway, Limits(models=frozenset({"private"})))
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    calls = [
        ("/v1/chat/completions", {**chat, "model": "fast"}),
        ("/v1/chat/completions", {**chat, "model": "gpt-4o-mini", "stream": True}),
        ("/v1/chat/completions", {**chat, "model": "smollm2-135m-instruct"}),  # the model, not the mode
        ("/v1/messages", {**chat, "model": "claude-haiku-4-5"}),
        ("/v1/messages", {**chat, "model": "claude-haiku-4-5", "stream": True}),
        ("/v1/messages/count_tokens", {"model": "claude-haiku-4-5", "messages": chat["messages"]}),
        ("/v1/generate", {"prompt": "hi", "mode": "fast"}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
    ]
    for path, body in calls:
        [answer] = await post_all(gateway, key, [body], path)
        assert answer.status_code == 403, (path, body, answer.text)
        error = answer.json()["error"]
        if path.startswith("/v1/messages"):
            assert error["type"] == "permission_error" and "allow-list" in error["message"]
        else:
            assert error["code"] == "model_not_allowed" and "private" in error["message"]
    assert upstreams.requests == []
    [allowed] = await post_all(gateway, key, [{**chat, "model": "private"}])
    assert allowed.status_code == 200


async def test_a_dead_replicas_reservation_holds_the_budget_until_it_expires_then_frees_it(gateway, upstreams):
    """A replica that reserved and died never settles: its reservation keeps the budget from
    being overshot, and is released at its expiry for the key's other calls."""
    budget = 3_000_000  # 3 cost_units: a worst case of 2.1 fits (6 bytes of prompt, 2 completion tokens)
    key = await limited_key(gateway, Limits(key_budget_micro=budget))
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    try:
        account_id = await redis.hget(f"neuroapi:key:{key[:14]}", "account_id")
        dead = LimitStore(redis, reservation_ttl_s=3)  # a replica's reservation, which it will never settle
        assert isinstance(await dead.reserve(key[:14], account_id, Limits(key_budget_micro=budget), 100,
                                             budget - 100_000, "req-dead"), Reserved)
        body = {"model": "gpt-4o-mini", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        [held] = await post_all(gateway, key, [body])
        assert held.status_code == 429 and held.json()["error"]["code"] == "insufficient_quota"
        await asyncio.sleep(3.5)
        [freed] = await post_all(gateway, key, [body])
        assert freed.status_code == 200, freed.text
        for _ in range(20):  # the call settles just after its answer
            usage = (await usage_of(gateway, key))["budgets"]["key"]
            if Decimal(usage["spent_cost_units"]) > 0:
                break
            await asyncio.sleep(0.1)
        assert usage["monthly_budget_cost_units"] == "3" and usage["reserved_cost_units"] == "0"
        assert 0 < Decimal(usage["spent_cost_units"]) <= Decimal("2.1")
        assert Decimal(usage["left_cost_units"]) == 3 - Decimal(usage["spent_cost_units"])
    finally:
        await redis.aclose()


async def usage_of(gateway, key: str) -> dict:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        answer = await client.get("/v1/usage", headers={**bearer(key), "X-Forwarded-For": caller_address()})
    assert answer.status_code == 200, answer.text
    return answer.json()
