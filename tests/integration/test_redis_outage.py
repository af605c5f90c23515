"""Redis is not a single point of failure (issue 13, item 5), on the real gateway.

While Redis is down, keys the ingress replicas verified before keep being served from their
caches (for at most ``cache_outage_serve_s``, 60 s by default, longer than this outage) and
their calls are metered once Redis is back; whatever needs Redis is a 503 with Retry-After,
never a 500. After a restart (or every connection closed, as a restart does) no request fails
on a stale pooled connection, and a revocation holds on every replica at once again.

The session's ``redis_server`` runs without persistence; to take it down without losing the
other tests' data: SAVE, stop, wait, start a new one with the same arguments on the same port
(it loads dump.rdb), and hand the new process to the fixture."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from contextlib import asynccontextmanager

import httpx
import redis
import redis.asyncio as aioredis

from actors.keys.crypto import KeyCrypto
from actors.keys.store import KeyStore
from config.secrets import load_key_material
from config.settings import load_settings
from core.key_format import generate_key
from tests.support.gateway_client import caller_address, mint_key, records_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
OUTAGE_S = 5.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def start_redis_process(server) -> subprocess.Popen:
    """The same redis-server as tests.support.redis_servers.start_redis, on the same port and folder."""
    process = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(server.port), "--bind", "127.0.0.1", "--dir",
         str(server.folder), "--save", "", "--appendonly", "no", "--daemonize", "no",
         "--logfile", str(server.folder / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        client = server.client()
        try:
            if client.ping():
                return process
        except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not come back"
            time.sleep(0.05)
        finally:
            client.close()


@asynccontextmanager
async def redis_down(server):
    """Redis stopped (its data saved first) for the block's duration, then started again."""
    client = server.client()
    client.save()
    client.close()
    server.process.terminate()
    server.process.wait(timeout=20)
    try:
        yield
    finally:
        server.process = await asyncio.to_thread(start_redis_process, server)


async def fresh(gateway, method: str, path: str, **kwargs) -> httpx.Response:
    """One request on a connection of its own, so HAProxy spreads them over both ingress replicas."""
    headers = {"X-Forwarded-For": caller_address(), "Connection": "close", **kwargs.pop("headers", {})}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        return await http.request(method, path, headers=headers, **kwargs)


def well_formed_unknown_key() -> str:
    return generate_key()[0]


async def revoke(gateway, key: str) -> None:
    material, _ = load_key_material(load_settings(gateway.config_path))
    client = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    try:
        await asyncio.wait_for(KeyStore(client, KeyCrypto(material)).revoke(key[:14]), timeout=120)
    finally:
        await client.aclose()


async def settled() -> None:
    """Every deployment running again (an earlier test kills an ingress replica), and a moment
    for a restarted replica's invalidation listener to subscribe: a replica caches a verified
    key only while it hears invalidations, and this test needs both replicas to hold it."""
    from ray import serve

    deadline = time.monotonic() + 60
    while serve.status().applications["neuroapi"].status != "RUNNING":
        assert time.monotonic() < deadline, "the application did not settle"
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)


async def test_verified_keys_are_served_through_a_redis_outage_and_the_rest_is_503(gateway):
    await settled()
    known, never_seen = await mint_key(gateway), await mint_key(gateway)
    for _ in range(10):  # verified, and cached, on both ingress replicas
        assert (await fresh(gateway, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(known))).status_code == 200

    answered: list[str] = []
    async with redis_down(gateway.redis):
        await asyncio.sleep(0.5)
        for _ in range(8):
            response = await fresh(gateway, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(known))
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"]
            answered.append(response.headers["x-request-id"])
        for path, method, key in (("/v1/chat/completions", "POST", never_seen), ("/v1/usage", "GET", known)):
            response = await fresh(gateway, method, path, headers=bearer(key), json=CHAT if method == "POST" else None)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.json()["error"]["code"] == "service_unavailable"
            assert int(response.headers["retry-after"]) >= 1
        await asyncio.sleep(max(0.0, OUTAGE_S - 4))

    # Back: every call answered during the outage is metered, none twice.
    records = await records_for(gateway, answered, timeout_s=60)
    assert set(records) == set(answered)
    assert {r["status"] for r in records.values()} == {"200"}

    # No 500 on a stale pooled connection: the next requests, sequential and mixed.
    statuses: dict[str, list[int]] = {"chat": [], "bad key": [], "usage": []}
    for index in range(40):
        kind = ("chat", "bad key", "usage")[index % 3]
        if kind == "chat":
            response = await fresh(gateway, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(known))
        elif kind == "bad key":
            response = await fresh(gateway, "POST", "/v1/chat/completions", json=CHAT,
                                   headers=bearer(well_formed_unknown_key()))
        else:
            response = await fresh(gateway, "GET", "/v1/usage", headers=bearer(known))
        statuses[kind].append(response.status_code)
    assert statuses == {"chat": [200] * 14, "bad key": [401] * 13, "usage": [200] * 13}

    # And a revocation holds on every replica from the very next request.
    await revoke(gateway, known)
    for _ in range(10):
        assert (await fresh(gateway, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(known))).status_code == 401


async def test_every_redis_connection_closed_at_once_fails_no_request(gateway):
    key = await mint_key(gateway)
    for _ in range(6):
        assert (await fresh(gateway, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(key))).status_code == 200
    admin = aioredis.Redis.from_url(gateway.redis.url)
    try:
        await admin.client_kill_filter(_type="normal", skipme=True)
        await admin.client_kill_filter(_type="pubsub")
    finally:
        await admin.aclose()
    # The listeners resubscribe and clear their caches, so these go to the verifiers, whose
    # pooled connections were all closed too.
    statuses = []
    for _ in range(6):
        statuses.append((await fresh(gateway, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(key))).status_code)
        statuses.append((await fresh(gateway, "GET", "/v1/usage", headers=bearer(key))).status_code)
        statuses.append((await fresh(gateway, "POST", "/v1/chat/completions", json=CHAT,
                                     headers=bearer(well_formed_unknown_key()))).status_code)
    assert statuses == [200, 200, 401] * 6
