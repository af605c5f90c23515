"""Serving through a Redis outage without a grace period for revocation (core.invalidation):
cache holders' leases, what a broadcast waits for, and what a cut-off holder may serve.
Real redis-servers; a holder "cut off" is one whose listener stopped without a graceful stop
(as a partition or kill -9 leaves it) or one whose Redis went away."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio as aioredis

from core import invalidation
from core.errors import GatewayError
from core.invalidation import (
    CREATED_FIELD,
    HOLDERS,
    LEASE_MARGIN_S,
    InvalidationListener,
    broadcast,
    server_time_us,
)
from core.redis_conn import connect
from serve_app.callers.client_address import parse_networks
from serve_app.callers.guard import FailedAuthGuard
from serve_app.callers.local_window import LocalSlidingWindow
from serve_app.callers.verifier_calls import RaisingHandle
from serve_app.runtime import free_port
from tests.support.redis_servers import start_aof_redis


async def until(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def started(url: str, outage_serve_s: float, heard: list | None = None,
                  resets: list | None = None) -> InvalidationListener:
    listener = InvalidationListener(
        url, lambda topic, subject: heard.append(subject) if heard is not None else None,
        lambda: resets.append(1) if resets is not None else None, outage_serve_s=outage_serve_s)
    listener.start()
    await until(lambda: listener.healthy)
    return listener


def cut_off(listener: InvalidationListener) -> None:
    """The listener stops hearing Redis and its lease stays registered (partition, kill -9)."""
    listener._task.cancel()
    listener._task = None
    listener._subscribed = False


async def lease_of(client: aioredis.Redis, listener: InvalidationListener) -> tuple[int, int, int] | None:
    lease = await client.hget(HOLDERS, listener.holder_id)
    return tuple(int(part) for part in lease.split()) if lease else None


async def test_an_acknowledging_holder_lets_a_broadcast_return_without_waiting_for_its_lease(own_redis, redis):
    heard: list[str] = []
    listener = await started(own_redis.url, outage_serve_s=300, heard=heard)
    try:
        # A 300 s lease: returning within the bound shows the acknowledgement, not the lease, counted.
        assert await asyncio.wait_for(broadcast(redis, "key", "neuro_aaaaaaaa"), timeout=20) == 1
        assert heard == ["neuro_aaaaaaaa"]
        assert await lease_of(redis, listener) is not None
    finally:
        await listener.stop()
    assert await lease_of(redis, listener) is None  # a graceful stop removes the lease


async def test_a_broadcast_waits_for_a_cut_off_holder_until_its_cache_is_unusable_then_prunes_it(own_redis, redis):
    serve_s = 2.0
    heard: list[str] = []
    listener = await started(own_redis.url, outage_serve_s=serve_s, heard=heard)
    cut_off(listener)
    contact_us, _, _ = await lease_of(redis, listener)
    assert listener.cache_usable  # it still serves what it cached, for now
    # Bounded only to avoid a hang: the lease (2 s) plus the margin plus plenty.
    await asyncio.wait_for(broadcast(redis, "key", "neuro_bbbbbbbb"), timeout=serve_s + LEASE_MARGIN_S + 20)
    # When the revocation returns, the cut-off holder can no longer serve from its cache,
    # by its own clock and by Redis's.
    assert not listener.cache_usable
    assert await server_time_us(redis) > contact_us + (serve_s + LEASE_MARGIN_S) * 1e6
    assert heard == []  # it never heard the message: its lease, not an acknowledgement, ended the wait
    assert await lease_of(redis, listener) is None  # pruned
    # And the next broadcast does not wait for it again.
    assert await asyncio.wait_for(broadcast(redis, "key", "neuro_cccccccc"), timeout=5) == 0


async def test_a_stale_registry_entry_is_pruned_at_once(redis):
    now_us = await server_time_us(redis)
    long_ago = now_us - 3600 * 1_000_000
    await redis.hset(HOLDERS, mapping={"dead-replica": f"{long_ago} 0 60000", CREATED_FIELD: 0})
    await asyncio.wait_for(broadcast(redis, "key", "neuro_dddddddd"), timeout=5)
    assert await redis.hget(HOLDERS, "dead-replica") is None


async def test_a_lost_registry_makes_broadcasts_wait_until_any_forgotten_holder_has_lapsed(redis, monkeypatch):
    monkeypatch.setattr(invalidation, "LOST_REGISTRY_WAIT_S", 1.0)
    await redis.delete(HOLDERS)  # as after a Redis restart without persistence
    await asyncio.wait_for(broadcast(redis, "key", "neuro_eeeeeeee"), timeout=20)
    created_us = int(await redis.hget(HOLDERS, CREATED_FIELD))
    assert await server_time_us(redis) > created_us + (1.0 + LEASE_MARGIN_S) * 1e6


async def test_a_holder_resubscribed_after_the_publish_is_recognised_without_waiting_for_its_lease(own_redis, redis):
    """It missed the message but cleared its cache on resubscribing: its next PONG proves it."""
    resets: list[int] = []
    listener = await started(own_redis.url, outage_serve_s=300, resets=resets)
    try:
        before = len(resets)
        await redis.client_kill_filter(_type="pubsub")  # it loses its subscription...
        result = await asyncio.wait_for(broadcast(redis, "key", "neuro_ffffffff"), timeout=20)
        assert result in (0, 1)  # heard it, or resubscribed (and cleared) after it
        await until(lambda: len(resets) > before)
    finally:
        await listener.stop()


# ---- a holder whose Redis goes away -----------------------------------------------------------

@pytest.fixture
def restartable(tmp_path):
    server = start_aof_redis(tmp_path / "redis")
    client = redis.Redis(port=server.port)
    client.hset(HOLDERS, CREATED_FIELD, 0)  # a fresh server: no holder predates it
    client.close()
    yield server
    server.stop()


async def test_a_holder_serves_its_cache_through_an_outage_for_at_most_its_bound_then_clears(restartable):
    serve_s = 3.0
    resets: list[int] = []
    listener = await started(restartable.url, outage_serve_s=serve_s, resets=resets)
    try:
        cleared_before = len(resets)
        restartable.stop()
        await until(lambda: not listener.healthy)
        assert listener.cache_usable  # what it cached before may be served...
        assert len(resets) == cleared_before  # ...so it was not cleared on losing Redis
        await until(lambda: not listener.cache_usable, timeout_s=serve_s + 10)  # ...but not past the bound
        restartable.start()
        await until(lambda: listener.healthy)
        assert len(resets) > cleared_before  # cleared on resubscribing: it may have missed messages
        assert listener.cache_usable
    finally:
        await listener.stop()


async def test_pooled_connections_closed_by_redis_are_replaced_invisibly(own_redis, redis):
    client = connect(own_redis.url)
    try:
        await asyncio.gather(*[client.set(f"pooled:{i}", i) for i in range(5)])  # several pooled connections
        await redis.client_kill_filter(_type="normal", skipme=True)  # as a Redis restart does
        assert await asyncio.gather(*[client.get(f"pooled:{i}") for i in range(5)]) == ["0", "1", "2", "3", "4"]
    finally:
        await client.aclose()


# ---- answers while Redis is away ----------------------------------------------------------------

async def test_failed_attempts_are_counted_in_the_replica_while_redis_is_away():
    unreachable = connect(f"redis://127.0.0.1:{free_port()}/0", retries=0)
    guard = FailedAuthGuard(unreachable, parse_networks([]), limit=3, window_s=60)
    unauthorised = GatewayError(401, "Invalid API key.", code="invalid_api_key")
    answers = [await guard.failed("192.0.2.7", unauthorised) for _ in range(4)]
    assert [a.status for a in answers] == [401, 401, 401, 429]
    assert answers[3].headers["Retry-After"]
    assert (await guard.failed("192.0.2.8", unauthorised)).status == 401  # per address
    await unreachable.aclose()


def test_the_local_window_slides():
    now = [0.0]
    window = LocalSlidingWindow(limit=2, window_s=10, clock=lambda: now[0])
    assert window.record("a").blocked_for_s == 0
    assert window.record("a").blocked_for_s == 10
    assert not window.record("a").counted
    now[0] = 10.5
    assert window.record("a").blocked_for_s == 0


class _Handle:
    def __init__(self, outcome):
        self.outcome = outcome

    def __getattr__(self, name):
        handle = self

        class Method:
            async def remote(self, *args):
                if isinstance(handle.outcome, BaseException):
                    raise handle.outcome
                return handle.outcome
        return Method()


async def test_a_verifier_call_that_fails_on_redis_is_a_503_with_retry_after():
    for outcome in (redis.exceptions.ConnectionError("Connection refused"), redis.exceptions.TimeoutError("slow")):
        with pytest.raises(GatewayError) as raised:
            await RaisingHandle(_Handle(outcome)).verify.remote("neuro_x")
        assert (raised.value.status, raised.value.code) == (503, "service_unavailable")
        assert raised.value.headers["Retry-After"]
    wrapped = RuntimeError("a Ray error")
    wrapped.__cause__ = redis.exceptions.ConnectionError("gone")
    with pytest.raises(GatewayError):
        await RaisingHandle(_Handle(wrapped)).session.remote("nsess_x")
    value = GatewayError(409, "taken", code="account_exists")
    with pytest.raises(GatewayError) as raised:
        await RaisingHandle(_Handle(value)).signup.remote("a@example.com", "pw")
    assert raised.value is value
    assert await RaisingHandle(_Handle(None)).verify.remote("neuro_x") is None


async def test_a_broadcast_waiting_longer_than_its_clients_read_timeout_still_gets_the_ack(own_redis):
    """A receiver that acknowledges after the publisher's socket_timeout: the broadcast polls in
    short reads, so its client's read bound (5 s in some callers) never cuts the wait short."""
    receiver_redis = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    pubsub = receiver_redis.pubsub()
    await pubsub.subscribe(invalidation.CHANNEL)
    publisher = aioredis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=1.0)

    async def slow_receiver() -> None:
        message = None
        while message is None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        await asyncio.sleep(2.5)
        await receiver_redis.rpush(invalidation._ack_key(json.loads(message["data"])["id"]), "slow-holder")

    receiving = asyncio.create_task(slow_receiver())
    try:
        assert await broadcast(publisher, "key", "neuro_ffffffff", wait_for_leases=False) == 1
    finally:
        await receiving
        await pubsub.aclose()
        await receiver_redis.aclose()
        await publisher.aclose()
