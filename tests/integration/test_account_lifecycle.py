"""Data-subject requests on the real gateway (two ingress replicas, real Redis): export holds
everything about the account, deletion rejects its keys and sessions everywhere at once, and the
purge batch (`neuroapi purge`) leaves only the detached accounting records."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from actors.accounts.export import export_account
from actors.accounts.sealing import AccountSealer
from config.secrets import load_key_material
from config.settings import load_settings
from tests.support.gateway_client import bearer, records_for
from tests.support.leak_scan import scan_redis

PASSWORD = "a long enough password"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def sealer_of(gateway) -> AccountSealer:
    """What opens the gateway's sealed account fields: its own key material."""
    return AccountSealer(load_key_material(load_settings(gateway.config_path))[0])


def neuroapi(gateway, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "neuroapi"), *args, "--config", str(gateway.config_path)],
                          env={**os.environ, **gateway.environ}, capture_output=True, text=True, timeout=120)


async def account(client) -> tuple[str, str, str, str]:
    """(email, account id, session token, API key) of a new account that made one chat call."""
    email = f"dsr-{secrets.token_hex(4)}@example.com"
    credentials = {"email": email, "password": PASSWORD}
    account_id = (await client.post("/v1/auth/signup", json=credentials)).json()["id"]
    token = (await client.post("/v1/auth/login", json=credentials)).json()["token"]
    key = (await client.post("/v1/keys", json={"name": "dsr"}, headers=bearer(token))).json()["key"]
    return email, account_id, token, key


async def test_export_holds_the_account_its_keys_usage_and_calls_and_no_secret(gateway, client):
    email, account_id, token, key = await account(client)
    called = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    await records_for(gateway, [called.headers["x-request-id"]])
    exported = await client.get("/v1/account/export", headers=bearer(token))
    assert exported.status_code == 200
    document = exported.json()
    assert document["account"]["id"] == account_id and document["account"]["email"] == email
    assert [k["prefix"] for k in document["keys"]] == [key[:len("neuro_") + 8]]
    assert called.headers["x-request-id"] in {c["request_id"] for c in document["calls"]}
    assert key.split("_")[2] not in exported.text  # the key's secret is never exported
    assert (await client.get("/v1/account/export")).status_code == 401


async def test_deletion_rejects_keys_and_sessions_everywhere_at_once_then_the_purge_forgets(gateway, client):
    email, account_id, token, key = await account(client)
    other_email, other_id, _, other_key = await account(client)
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    email_index = await redis.hget(f"neuroapi:account:{account_id}", "email_index")
    await redis.aclose()
    assert email_index and email_index.startswith("neuroapi:account-by-email:v")
    wrong = await client.request("DELETE", "/v1/account", json={"password": "not it at all"}, headers=bearer(token))
    assert wrong.status_code == 401
    deleted = await client.request("DELETE", "/v1/account", json={"password": PASSWORD}, headers=bearer(token))
    assert deleted.status_code == 200, deleted.text
    # No grace: every replica refuses the key and the session from now on.
    assert {(await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))).status_code
            for _ in range(12)} == {401}
    assert (await client.get("/v1/keys", headers=bearer(token))).status_code == 401
    assert (await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})).status_code == 401
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(other_key))).status_code == 200

    purge = neuroapi(gateway, "purge")
    assert purge.returncode == 0, purge.stderr
    assert account_id in purge.stdout
    for needle in (email, hashlib.sha256(email.encode()).hexdigest(), email_index, key[:len("neuro_") + 8]):
        assert scan_redis(gateway.redis.url, needle) == []
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    try:
        assert await redis.exists(f"neuroapi:account:{account_id}") == 0
        assert (await export_account(redis, other_id, sealer_of(gateway)))["account"]["email"] == other_email
    finally:
        await redis.aclose()
    again = neuroapi(gateway, "purge")  # a second purge is a no-op
    assert again.returncode == 0 and account_id not in again.stdout
