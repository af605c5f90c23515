"""What checking an API key costs on the hot path, cache hit against cache miss.

    .venv/bin/python -m benchmarks.key_verification

In process (no Ray): a hit is parse + SHA-256 fingerprint + the ingress cache lookup; a miss
is ``KeyStore.verify`` against a real redis-server (one HMGET, one HGET, one HMAC). Through
the real gateway (``neuroapi serve`` against the fast fake upstream, sequential calls): the
same key every time (hits) against a key never used before on every call (misses, so each
pays the hop to a verifier replica too); the difference of the medians is a miss's price."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from actors.accounts.store import AccountStore
from actors.keys.crypto import KeyCrypto
from actors.keys.store import KeyStore, VerifiedKey
from benchmarks.systems import NeuroAPI, Upstream
from config.secrets import load_key_material
from config.settings import load_settings
from core.key_format import parse_key
from serve_app.callers.key_cache import VerifiedKeyCache, fingerprint
from tests.conftest import start_redis

CALLS = 300


def in_process_hit_us(key: str) -> float:
    cache = VerifiedKeyCache()
    prefix = parse_key(key).prefix
    cache.put(fingerprint(key), VerifiedKey(prefix, "acct_x"), cache.generation)

    def hit() -> None:
        parsed = parse_key(key)
        assert cache.get(parsed.prefix, fingerprint(key)) is not None

    n = 50_000
    return min(timeit.repeat(hit, number=n, repeat=3)) / n * 1e6


async def in_process_miss_us(folder: Path) -> tuple[float, str]:
    server = start_redis(folder / "redis")
    redis = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        settings = load_settings(environ={"NEUROAPI_DATA_DIR": str(folder)})
        store = KeyStore(redis, KeyCrypto(load_key_material(settings, create=True)[0]))
        account = await AccountStore(redis).create("bench@example.com")
        key, _ = await store.create(account.id, "bench")
        for _ in range(200):
            await store.verify(key)
        timings = []
        for _ in range(2000):
            started = time.perf_counter()
            assert await store.verify(key) is not None
            timings.append(time.perf_counter() - started)
        return statistics.median(timings) * 1e6, key
    finally:
        await redis.aclose()
        server.process.terminate()


def through_gateway() -> tuple[float, float]:
    upstream = Upstream(None, 0, 20)
    gateway = NeuroAPI(upstream, None)
    try:
        base = gateway.url.removesuffix("/v1/chat/completions")
        with httpx.Client(base_url=base, timeout=30) as http:
            credentials = {"email": "verify-bench@example.com", "password": "a long enough password"}
            http.post("/v1/auth/signup", json=credentials).raise_for_status()
            token = http.post("/v1/auth/login", json=credentials).json()["token"]
            keys = [http.post("/v1/keys", json={"name": f"k{i}"}, headers={"Authorization": f"Bearer {token}"}
                              ).json()["key"] for i in range(CALLS)]
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

            def median_ms(sequence: list[str]) -> float:
                timings = []
                for key in sequence:
                    started = time.perf_counter()
                    response = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                    timings.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                return statistics.median(timings) * 1000

            median_ms([keys[0]] * 50)  # warm up both paths' connections
            hits = median_ms([keys[0]] * CALLS)
            misses = median_ms(keys[1:])
            return hits, misses
    finally:
        gateway.stop()
        upstream.stop()


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="neuroapi-verify-bench-"))
    miss_us, key = asyncio.run(in_process_miss_us(folder))
    hit_us = in_process_hit_us(key)
    hits_ms, misses_ms = through_gateway()
    print("| path | cache hit | cache miss | miss / hit |")
    print("|---|---|---|---|")
    print(f"| key check in process (no Ray), median | {hit_us:.1f} µs | {miss_us:.1f} µs | {miss_us / hit_us:.0f}x |")
    print(f"| whole call through the gateway, sequential median | {hits_ms:.2f} ms | {misses_ms:.2f} ms "
          f"| +{(misses_ms - hits_ms) * 1000:.0f} µs per miss |")


if __name__ == "__main__":
    main()
