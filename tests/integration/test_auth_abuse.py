"""Abuse without a key on real Ray Serve (two ingress and two verifier replicas) and a real
Redis: a blocked address still gets a key it has proven and nothing else (with no verifier hop),
sign-ups are limited per address and their bcrypt work is bounded without slowing log-ins,
e-mails with control characters are refused, and the admin scope API keeps e-mails out of URLs."""

import asyncio
import secrets

import httpx
import redis.asyncio as aioredis

from tests.support.gateway_client import caller_address, mint_key

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
PASSWORD = "a long enough password"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def email() -> str:
    return f"abuse-{secrets.token_hex(4)}@example.com"


async def block(client) -> None:
    """Reach the failed-auth limit (20) from the client's address: key-less calls, no lookup."""
    answers = [(await client.get("/v1/models")).status_code for _ in range(21)]
    assert answers == [401] * 20 + [429]


async def test_a_blocked_address_keeps_a_proven_key_and_nothing_else(client, gateway):
    key = await mint_key(gateway)
    credentials = {"email": email(), "password": PASSWORD}
    assert (await client.post("/v1/auth/signup", json=credentials)).status_code == 201
    for _ in range(8):  # both ingress replicas verify and cache it (HAProxy alternates between them)
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))).status_code == 200

    await block(client)
    for _ in range(8):  # the proven key is served on every replica
        response = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
        assert response.status_code == 200, response.text
    # A valid key this address has not proven yet is refused like any guess: the verifier, which
    # would have accepted it, is not asked.
    fresh = await mint_key(gateway)
    for _ in range(4):
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(fresh))
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "too_many_failed_attempts"
    # Guessable secrets stay blocked, even the right password.
    assert (await client.post("/v1/auth/login", json=credentials)).status_code == 429
    # Another address is not affected.
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"X-Forwarded-For": caller_address()}) as other:
        assert (await other.post("/v1/chat/completions", json=CHAT, headers=bearer(fresh))).status_code == 200
        assert (await other.post("/v1/auth/login", json=credentials)).status_code == 200


async def test_failure_windows_are_keyed_by_canonical_ip_only(gateway):
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    before = set(await redis.keys("neuroapi:auth-failures:*"))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for forged in ("not an ip {}[]", "x" * 7000, "2001:DB8::00AB"):
            assert (await http.get("/v1/models", headers={"X-Forwarded-For": forged})).status_code == 401
    new = set(await redis.keys("neuroapi:auth-failures:*")) - before
    await redis.aclose()
    assert new <= {"neuroapi:auth-failures:not-an-ip", "neuroapi:auth-failures:2001:db8::ab"}
    assert "neuroapi:auth-failures:2001:db8::ab" in new


async def test_sign_ups_are_limited_per_address(client, gateway):
    answers = [(await client.post("/v1/auth/signup", json={"email": email(), "password": PASSWORD})).status_code
               for _ in range(10)]
    assert answers == [201] * 10
    refused = await client.post("/v1/auth/signup", json={"email": email(), "password": PASSWORD})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_signups"
    assert 3500 < int(refused.headers["Retry-After"]) <= 3600
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"X-Forwarded-For": caller_address()}) as other:
        assert (await other.post("/v1/auth/signup", json={"email": email(), "password": PASSWORD})).status_code == 201


async def test_a_sign_up_flood_is_bounded_and_log_ins_still_work(client, gateway):
    credentials = {"email": email(), "password": PASSWORD}
    assert (await client.post("/v1/auth/signup", json=credentials)).status_code == 201

    async def sign_up(http: httpx.AsyncClient) -> httpx.Response:
        # Each from an address of its own, so only the bcrypt budget can refuse it.
        return await http.post("/v1/auth/signup", json={"email": email(), "password": PASSWORD},
                               headers={"X-Forwarded-For": caller_address()})

    limits = httpx.Limits(max_connections=300)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as http:
        flood = [asyncio.create_task(sign_up(http)) for _ in range(300)]
        login = await client.post("/v1/auth/login", json=credentials)
        answers = await asyncio.gather(*flood)
    assert login.status_code == 200, login.text
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {201, 503}, statuses
    busy = [a for a in answers if a.status_code == 503]
    assert busy and statuses.count(201) >= 2, statuses
    assert all(a.json()["error"]["code"] == "signup_busy" and a.headers["Retry-After"] == "1" for a in busy)


async def test_an_email_with_a_control_character_is_refused(client):
    for bad in ("nul\x00@example.com", "esc\x1b[2J@example.com", "rtl\u202e@example.com"):
        response = await client.post("/v1/auth/signup", json={"email": bad, "password": PASSWORD})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_email", response.text


async def test_the_admin_scope_api_takes_the_email_in_the_body(client, gateway):
    address = email()
    assert (await client.post("/v1/auth/signup", json={"email": address, "password": PASSWORD})).status_code == 201
    admin = bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"])
    changed = await client.put("/v1/admin/account-scope", headers=admin,
                               json={"email": address, "excluded_providers": ["openai"]})
    assert changed.status_code == 200 and changed.json()["excluded_providers"] == ["openai"]
    shown = await client.post("/v1/admin/account-scope/lookup", json={"email": address}, headers=admin)
    assert shown.status_code == 200 and shown.json()["excluded_providers"] == ["openai"]
    for method in ("GET", "PUT"):  # the old routes, with the e-mail in the path, are gone
        old = await client.request(method, f"/v1/admin/accounts/{address}/scope", headers=admin, json={})
        assert old.status_code == 404 and set(old.json()["error"]) == {"message", "type", "param", "code"}
