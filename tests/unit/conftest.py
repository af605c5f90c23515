"""Redis servers of a test module's own (module scope: each module that asks gets its own)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from core import invalidation
from tests.support.redis_servers import start_aof_redis, start_redis
from tests.support.stripe_server import FakeStripe


@pytest.fixture(autouse=True)
def _no_lost_registry_wait(monkeypatch):
    """Each Redis server here is fresh (or flushed by the test): no cache holder predates it,
    so a broadcast need not wait for a lost holder registry to age (core.invalidation)."""
    monkeypatch.setattr(invalidation, "LOST_REGISTRY_WAIT_S", 0.0)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    """Nothing else uses it: subscriber counts and full scans see only this module's doing."""
    server = start_redis(tmp_path_factory.mktemp("redis-own"))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture(name="redis")
async def redis_fixture(own_redis):
    client = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def aof_redis(tmp_path_factory):
    server = start_aof_redis(tmp_path_factory.mktemp("redis-aof"))
    yield server
    server.stop()


@pytest.fixture
async def aof_client(aof_redis):
    if aof_redis.process is None:  # a failed test left it stopped
        aof_redis.start()
    client = aioredis.Redis.from_url(aof_redis.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def fake():
    """A fresh Stripe-compatible server (tests/support/stripe_server.py) for one billing test."""
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture
def neuroapi(own_redis, monkeypatch, capsys):
    """``neuroapi ...`` in-process against the module's Redis: (exit code, stdout, stderr)."""
    from core import logs
    from serve_app import cli
    with own_redis.client() as client:
        client.flushdb()
    monkeypatch.delenv("NEUROAPI_CONFIG", raising=False)
    monkeypatch.setenv("NEUROAPI_REDIS_URL", own_redis.url)
    monkeypatch.setattr(logs, "install", lambda **_: None)

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run
