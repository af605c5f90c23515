"""Account scopes on real Ray Serve and Redis with fake upstreams that record every request:
an excluded or third-party provider is never contacted on any path (modes, explicit models,
fallbacks), a change holds on every replica once it returns, and it is audited."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from ray import serve

from core.audit import AUDIT_STREAM
from core.backend import UpstreamCall, UpstreamFailure
from core.scope import Scope
from tests.support.gateway_client import account_with_key, bearer, set_scope
from tests.support.upstreams import Behaviour


def chat(model: str, text: str = "hello", stream: bool = False) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


async def test_in_house_only_reaches_in_house_models_and_nothing_else(client, gateway, upstreams):
    email, key = await account_with_key(client)
    assert (await set_scope(client, gateway, email, in_house_only=True))["replicas_confirmed"] >= 2
    for model in ("fast", "gpt-4o-mini", "claude-haiku-4-5", "cheap"):
        for stream in (False, True):
            response = await client.post("/v1/chat/completions", json=chat(model, stream=stream), headers=bearer(key))
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert (error["code"], error["type"]) == ("scope_forbids", "permission_error")
            assert "in-house models only" in error["message"]
            assert not any(p in error["message"].lower() for p in ("openai", "anthropic", "deepseek"))
    assert upstreams.requests == []  # nothing was sent anywhere

    answer = await client.post("/v1/chat/completions", json={**chat("private"), "max_tokens": 8}, headers=bearer(key))
    assert answer.status_code == 200 and answer.json()["model"] == "smollm2-135m-instruct"
    assert upstreams.requests == []  # served on the gateway's own replicas: nothing left
    listed = (await client.get("/v1/models", headers=bearer(key))).json()["data"]
    assert [m["id"] for m in listed] == ["private", "support", "smollm2-135m-embed", "smollm2-135m-instruct",
                                         "smollm2-transformers"]


async def test_an_excluded_provider_is_skipped_on_every_path(client, gateway, upstreams):
    email, key = await account_with_key(client)
    await set_scope(client, gateway, email, excluded_providers=["openai"])
    for _ in range(12):  # "fast" draws gpt-4o-mini three times in four when allowed
        response = await client.post("/v1/chat/completions", json=chat("fast"), headers=bearer(key))
        assert response.status_code == 200 and response.json()["model"] != "gpt-4o-mini"
    # A failure falls back past the excluded provider, never to it.
    upstreams.script("claude-haiku-4-5", Behaviour(status=500))
    response = await client.post("/v1/chat/completions", json=chat("fast", stream=True), headers=bearer(key))
    assert response.status_code == 200 and b"deepseek-chat" in response.content
    # "cheap" falls back to gpt-4o-mini when deepseek fails: not for this account.
    upstreams.script("deepseek-chat", Behaviour(status=503))
    assert (await client.post("/v1/chat/completions", json=chat("cheap"), headers=bearer(key))).status_code == 502
    assert (await client.post("/v1/chat/completions", json=chat("gpt-4o-mini"), headers=bearer(key))).status_code == 403
    assert "openai" not in {r.provider for r in upstreams.requests}
    ids = [m["id"] for m in (await client.get("/v1/models", headers=bearer(key))).json()["data"]]
    assert "gpt-4o-mini" not in ids and "claude-haiku-4-5" in ids and "fast" in ids


async def test_no_request_started_after_a_scope_change_reaches_the_excluded_provider(client, gateway, upstreams):
    email, key = await account_with_key(client)
    started_at: dict[str, float] = {}
    stop = asyncio.Event()

    async def caller(worker: int) -> None:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for n in range(10_000):
                if stop.is_set():
                    return
                marker = f"call-{worker}-{n}"
                started_at[marker] = time.monotonic()
                await http.post("/v1/chat/completions", json=chat("gpt-4o-mini", marker), headers=bearer(key))

    callers = [asyncio.create_task(caller(i)) for i in range(6)]
    await asyncio.sleep(1.5)
    await set_scope(client, gateway, email, excluded_providers=["openai"])
    changed_at = time.monotonic()
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*callers)
    reached = [r.body["messages"][0]["content"] for r in upstreams.requests if r.provider == "openai"]
    assert len(reached) > 10  # traffic flowed before the change
    late = [m for m in reached if started_at[m] > changed_at]
    assert late == []
    assert sum(1 for t in started_at.values() if t > changed_at) > 10  # and calls kept coming after it


async def test_the_admin_api_needs_its_token_and_checks_what_it_is_given(client, gateway):
    email, _ = await account_with_key(client)
    lookup = "/v1/admin/account-scope/lookup"
    assert (await client.post(lookup, json={"email": email})).status_code == 401
    wrong = await client.post(lookup, json={"email": email}, headers=bearer("admin-wrong"))
    assert wrong.json()["error"]["code"] == "invalid_admin_token"
    token = bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"])
    assert (await client.post(lookup, json={"email": email}, headers=token)).json() | {"account_id": None} == {
        "object": "account_scope", "account_id": None, "in_house_only": False, "excluded_providers": []}
    unknown = await client.put("/v1/admin/account-scope", json={"email": email, "excluded_providers": ["nope"]},
                               headers=token)
    assert unknown.status_code == 400 and "nope" in unknown.json()["error"]["message"]
    missing = await client.post(lookup, json={"email": "nobody@example.com"}, headers=token)
    assert missing.status_code == 404


async def test_cli_scope_changes_are_audited_without_customer_content(client, gateway):
    email, key = await account_with_key(client)

    def neuroapi(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "neuroapi"), *args, "--config",
                               str(gateway.config_path)], env={**os.environ, **gateway.environ},
                              capture_output=True, text=True, timeout=60)

    result = neuroapi("accounts", "scope", email, "--exclude-provider", "deepseek", "--exclude-provider", "anthropic")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [email, "in_house_only=no", "excluded=anthropic,deepseek"]
    assert (await client.post("/v1/chat/completions", json=chat("cheap"), headers=bearer(key))).json()["model"] \
        == "gpt-4o-mini"
    assert neuroapi("accounts", "scope", email, "--clear").returncode == 0
    bad = neuroapi("accounts", "scope", email, "--exclude-provider", "nope")
    assert bad.returncode == 2 and "unknown provider(s): nope" in bad.stderr

    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    entries = [fields for _, fields in await redis.xrevrange(AUDIT_STREAM, count=50)]
    await redis.aclose()
    account_id = (await client.post("/v1/admin/account-scope/lookup", json={"email": email},
                                    headers=bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"]))).json()["account_id"]
    mine = [e for e in entries if e.get("account_id") == account_id]
    assert [json.loads(e["after"]) for e in mine] == [
        {"in_house_only": False, "excluded_providers": []},
        {"in_house_only": False, "excluded_providers": ["anthropic", "deepseek"]},
    ]
    assert all(e["actor"].startswith("cli:") and e["action"] == "scope.set" and int(e["at"]) > 0 for e in mine)
    assert set(mine[0]) == {"at", "actor", "action", "account_id", "before", "after"}


async def test_a_provider_proxy_refuses_a_call_its_scope_forbids_before_connecting(gateway, upstreams):
    handle = serve.get_deployment_handle("Provider-openai", app_name="neuroapi")
    call = UpstreamCall("req-direct", "gpt-4o-mini", chat("gpt-4o-mini"), False,
                        Scope(excluded_providers=frozenset({"openai"})))
    refused = await handle.complete.remote(call)
    assert isinstance(refused, UpstreamFailure) and refused.error.code == "scope_forbids"
    streamed = [item async for item in handle.options(stream=True).stream.remote(call)]
    assert len(streamed) == 1 and streamed[0].error.status == 403
    assert upstreams.requests == []
