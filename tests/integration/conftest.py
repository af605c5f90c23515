import secrets

import httpx
import pytest
import redis.asyncio as aioredis

from actors.accounts import AccountStore
from actors.key_crypto import KeyCrypto
from actors.key_store import KeyStore
from config.secrets import load_key_material
from config.settings import load_settings


async def mint_key(gateway) -> str:
    """A real key in the gateway's Redis, made with the gateway's own key material."""
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    settings = load_settings(gateway.config_path)
    material, _ = load_key_material(settings)
    account = await AccountStore(redis).create(f"it-{secrets.token_hex(4)}@example.com")
    plaintext, _ = await KeyStore(redis, KeyCrypto(material)).create(account.id, "test")
    await redis.aclose()
    return plaintext


@pytest.fixture
async def api_key(gateway) -> str:
    return await mint_key(gateway)


def caller_address() -> str:
    """A random documentation address (RFC 3849) to play a distinct caller."""
    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


@pytest.fixture
async def client(gateway):
    """A caller with an address of its own (the tests' X-Forwarded-For is believed), so one
    test's failed attempts never count against another's."""
    headers = {"X-Forwarded-For": caller_address()}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=headers) as http:
        yield http
