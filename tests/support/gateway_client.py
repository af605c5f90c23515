"""Calling the session's real gateway (the ``gateway`` fixture in tests/conftest.py) as its users
do: keys minted with its own key material, accounts signed up over HTTP, distinct caller
addresses, and the metering records its batcher wrote. Also the ``api_key`` and ``client``
fixtures, which tests/integration/conftest.py and tests/e2e/conftest.py both offer."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time

import httpx
import pytest
import redis.asyncio as aioredis

from actors.accounts.sealing import AccountSealer
from actors.accounts.store import AccountStore
from actors.keys.crypto import KeyCrypto
from actors.keys.store import KeyStore
from actors.metering.usage_store import CALLS_STREAM
from config.secrets import load_key_material
from config.settings import load_settings


async def mint_key(gateway) -> str:
    """A real key in the gateway's Redis, made with the gateway's own key material."""
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    settings = load_settings(gateway.config_path)
    material, _ = load_key_material(settings)
    account = await AccountStore(redis, AccountSealer(material)).create(f"it-{secrets.token_hex(4)}@example.com")
    plaintext, _ = await KeyStore(redis, KeyCrypto(material)).create(account.id, "test")
    await redis.aclose()
    return plaintext


def caller_address() -> str:
    """A random documentation address (RFC 3849) to play a distinct caller, in canonical form
    (as the gateway keys it)."""
    return str(ipaddress.ip_address(f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def account_with_key(client) -> tuple[str, str]:
    """(email, API key) of a new account, made the way a user makes one: sign up, log in, ask."""
    email = f"scope-{secrets.token_hex(4)}@example.com"
    credentials = {"email": email, "password": "a long enough password"}
    assert (await client.post("/v1/auth/signup", json=credentials)).status_code == 201
    token = (await client.post("/v1/auth/login", json=credentials)).json()["token"]
    key = (await client.post("/v1/keys", json={"name": "scoped"}, headers=bearer(token))).json()["key"]
    return email, key


async def set_scope(client, gateway, email: str, **scope) -> dict:
    """An account's scope set by the operator's admin API (``in_house_only``, ``excluded_providers``)."""
    response = await client.put("/v1/admin/account-scope", json={"email": email, **scope},
                                headers=bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"]))
    assert response.status_code == 200, response.text
    return response.json()


async def records_for(gateway, request_ids: list[str], timeout_s: float = 20.0) -> dict[str, dict]:
    """The calls-stream entries of these requests, once the batcher has written them all."""
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            found = {fields["request_id"]: fields for _, fields in await redis.xrevrange(CALLS_STREAM, count=5000)
                     if fields["request_id"] in request_ids}
            if len(found) == len(set(request_ids)) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()


@pytest.fixture
async def api_key(gateway) -> str:
    return await mint_key(gateway)


@pytest.fixture
async def client(gateway):
    """A caller with an address of its own (the tests' X-Forwarded-For is believed), so one
    test's failed attempts never count against another's."""
    headers = {"X-Forwarded-For": caller_address()}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=headers) as http:
        yield http
