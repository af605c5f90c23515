"""Accounts and keys over HTTP on real Ray Serve (two ingress and two verifier replicas) and a
real Redis: sign-up, log-in, key management, revocation with no grace period, failed-auth
throttling, and the checksum that rejects a mistyped key without a lookup."""

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.support.gateway_client import caller_address

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def signed_up(client) -> tuple[str, str]:
    """(email, session token) of a new account."""
    email = f"api-{secrets.token_hex(4)}@example.com"
    response = await client.post("/v1/auth/signup", json={"email": email, "password": "a long enough password"})
    assert response.status_code == 201, response.text
    login = await client.post("/v1/auth/login", json={"email": email, "password": "a long enough password"})
    assert login.status_code == 200, login.text
    return email, login.json()["token"]


async def new_key(client, token: str, name: str = "test") -> dict:
    response = await client.post("/v1/keys", json={"name": name}, headers=bearer(token))
    assert response.status_code == 201, response.text
    return response.json()


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and set(error) == {"message", "type", "param", "code"}


async def test_sign_up_validates_and_refuses_duplicates(client):
    email = f"Dup-{secrets.token_hex(4)}@Example.com"
    created = await client.post("/v1/auth/signup", json={"email": email, "password": "a long enough password"})
    assert created.status_code == 201
    assert created.json()["email"] == email.lower() and created.json()["id"].startswith("acct_")
    assert "password" not in created.text
    again = await client.post("/v1/auth/signup", json={"email": email.lower(), "password": "another password!"})
    assert_error(again, 409, "account_exists")
    assert_error(await client.post("/v1/auth/signup", json={"email": "nope", "password": "a long enough password"}),
                 400, "invalid_email")
    short = await client.post("/v1/auth/signup", json={"email": "x" + email, "password": "short"})
    assert_error(short, 400, "invalid_password")
    assert "short" not in short.text
    assert_error(await client.post("/v1/auth/signup", json={"email": email}), 400, "missing_required_parameter")


async def test_log_in_is_the_same_401_for_a_wrong_password_and_an_unknown_email(client):
    email, _ = await signed_up(client)
    wrong = await client.post("/v1/auth/login", json={"email": email, "password": "not the password"})
    unknown = await client.post("/v1/auth/login", json={"email": "x" + email, "password": "not the password"})
    assert_error(wrong, 401, "invalid_credentials")
    assert wrong.json() == unknown.json()


async def test_key_management_shows_a_key_once_and_never_a_secret_again(client, gateway):
    email, token = await signed_up(client)
    created = await new_key(client, token, "laptop")
    key = created["key"]
    assert re.fullmatch(r"neuro_[a-z0-9]{8}_[0-9A-Za-z]{38}", key) and key.startswith(created["prefix"] + "_")
    assert (created["name"], created["status"], created["last_used_at"]) == ("laptop", "active", None)
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))).status_code == 200

    listed = await client.get("/v1/keys", headers=bearer(token))
    assert listed.status_code == 200
    [entry] = listed.json()["data"]
    assert set(entry) == {"object", "prefix", "name", "status", "created_at", "last_used_at", "limits",
                          "operator_limits"}
    assert entry["prefix"] == created["prefix"]
    assert key.split("_")[2] not in listed.text
    for _ in range(40):  # ingress replicas report uses in batches every few seconds
        entry = (await client.get("/v1/keys", headers=bearer(token))).json()["data"][0]
        if entry["last_used_at"]:
            break
        await asyncio.sleep(0.5)
    assert abs(entry["last_used_at"] - time.time()) < 60

    # The CLI sees the same records.
    cli = subprocess.run([str(Path(sys.executable).parent / "neuroapi"), "keys", "list", email,
                          "--config", str(gateway.config_path)], env={**os.environ, **gateway.environ},
                         capture_output=True, text=True, timeout=60)
    assert cli.stdout.split()[:3] == [created["prefix"], "active", "laptop"], cli.stderr


async def test_account_endpoints_need_a_live_session(client):
    _, token = await signed_up(client)
    assert_error(await client.get("/v1/keys"), 401, "invalid_session")
    other_email, other_token = await signed_up(client)
    key = await new_key(client, other_token)
    assert_error(await client.get("/v1/keys", headers=bearer(key["key"])), 401, "invalid_session")  # a key is no session
    assert_error(await client.delete(f"/v1/keys/{key['prefix']}", headers=bearer(token)), 404, "key_not_found")
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key["key"]))).status_code == 200

    assert (await client.post("/v1/auth/logout", headers=bearer(token))).status_code == 200
    assert_error(await client.get("/v1/keys", headers=bearer(token)), 401, "invalid_session")
    assert_error(await client.post("/v1/keys", json={"name": "x"}, headers=bearer(token[:-3] + "abc")),
                 401, "invalid_session")


async def test_no_request_succeeds_once_revoke_returns_on_any_replica(client, gateway):
    """Concurrent traffic over many connections (spread by HAProxy over both ingress replicas,
    with cache misses going to both verifiers) while the key is revoked over HTTP."""
    _, token = await signed_up(client)
    key = await new_key(client, token)
    results: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def caller() -> None:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            while not stop.is_set():
                started = time.monotonic()
                # A fresh address each time: the 401s after the revoke must not trip the throttle.
                response = await http.post("/v1/chat/completions", json=CHAT,
                                           headers={**bearer(key["key"]), "X-Forwarded-For": caller_address()})
                results.append((started, response.status_code))

    callers = [asyncio.create_task(caller()) for _ in range(8)]
    await asyncio.sleep(1.5)
    revoked = await client.delete(f"/v1/keys/{key['prefix']}", headers=bearer(token))
    revoked_at = time.monotonic()
    assert revoked.json() == {"object": "api_key", "prefix": key["prefix"], "status": "revoked"}
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*callers)
    before = [status for started, status in results if started < revoked_at - 0.5]
    after = [status for started, status in results if started > revoked_at]
    assert before.count(200) > 10 and set(before) == {200}
    assert len(after) > 10 and set(after) == {401}


async def test_twenty_failures_from_one_address_then_429_until_the_window_allows(client, api_key, gateway):
    blocked, bystander = caller_address(), caller_address()
    wrong = api_key[:-10] + "0123456789"  # valid prefix, wrong secret (and checksum)
    statuses = []
    for _ in range(20):
        response = await client.post("/v1/chat/completions", json=CHAT,
                                     headers={**bearer(wrong), "X-Forwarded-For": blocked})
        statuses.append(response.status_code)
    assert statuses == [401] * 20
    for headers in (bearer(wrong), bearer(api_key)):  # then even the right key waits
        response = await client.post("/v1/chat/completions", json=CHAT,
                                     headers={**headers, "X-Forwarded-For": blocked})
        assert_error(response, 429, "too_many_failed_attempts")
        assert 1 <= int(response.headers["retry-after"]) <= 60
    ok = await client.post("/v1/chat/completions", json=CHAT, headers={**bearer(api_key), "X-Forwarded-For": bystander})
    assert ok.status_code == 200
    # Keyed by address, never by the key: nothing in Redis names the key.
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    keys = [k async for k in redis.scan_iter("neuroapi:auth-failures:*")]
    await redis.aclose()
    assert f"neuroapi:auth-failures:{blocked}" in keys and not [k for k in keys if api_key[:14] in k]


async def test_failed_logins_count_towards_the_same_limit(client):
    email, _ = await signed_up(client)
    address = caller_address()
    for _ in range(20):
        response = await client.post("/v1/auth/login", json={"email": email, "password": "not the password"},
                                     headers={"X-Forwarded-For": address})
        assert response.status_code == 401
    response = await client.post("/v1/auth/login", json={"email": email, "password": "a long enough password"},
                                 headers={"X-Forwarded-For": address})
    assert_error(response, 429, "too_many_failed_attempts")


async def test_a_wrong_checksum_is_rejected_without_a_key_lookup(client, api_key, gateway):
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)

    async def key_lookups() -> int:
        stats = await redis.info("commandstats")
        return stats.get("cmdstat_hmget", {}).get("calls", 0)

    last = api_key[-1]
    mistyped = api_key[:-1] + ("A" if last != "A" else "B")
    before = await key_lookups()
    for _ in range(5):
        assert_error(await client.post("/v1/chat/completions", json=CHAT, headers=bearer(mistyped)),
                     401, "invalid_api_key")
    assert await key_lookups() == before
    # The control: a well-formed unknown key is looked up.
    from core.key_format import generate_key
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(generate_key()[0]))).status_code == 401
    assert await key_lookups() > before
    await redis.aclose()
    assert await failures_of(gateway, client) == 6  # and each counted as a failed attempt


async def failures_of(gateway, client) -> int:
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    count = await redis.zcard(f"neuroapi:auth-failures:{client.headers['x-forwarded-for']}")
    await redis.aclose()
    return count


@pytest.mark.parametrize("body, code", [
    (b"not json", "invalid_json"), (b'{"email": "a@b.co", "password": "long enough pw", "admin": true}',
                                    "unsupported_parameter"),
])
async def test_bad_account_bodies_are_400s(client, body, code):
    response = await client.post("/v1/auth/signup", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, code)
