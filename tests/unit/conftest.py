"""Redis servers of a test module's own (module scope: each module that asks gets its own)."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from actors import invalidation
from serve_app.runtime import free_port
from tests.conftest import start_redis


@pytest.fixture(autouse=True)
def _no_lost_registry_wait(monkeypatch):
    """Each Redis server here is fresh (or flushed by the test): no cache holder predates it,
    so a broadcast need not wait for a lost holder registry to age (actors.invalidation)."""
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


@dataclass
class AofRedis:
    """A redis-server with append-only persistence that a test may stop and start again on the
    same port, data intact."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> AofRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the .ci/run script installs it)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    return self
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


def start_aof_redis(folder: Path) -> AofRedis:
    folder.mkdir(parents=True, exist_ok=True)
    return AofRedis(folder, free_port()).start()


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
