"""Cache invalidation with acknowledgement, for promises that allow no grace period.

Replicas that cache a decision (a verified key, later an account's scope) run an
``InvalidationListener``. The owner of the state changes it in Redis first, then calls
``broadcast``: it publishes on one channel and waits until every subscriber that received the
message has dropped the entry and acknowledged. When ``broadcast`` returns, no replica serves
the stale entry. A listener that loses its subscription, or hears nothing from Redis for
``STALE_AFTER_S``, is unhealthy: its owner must not use the cache until it has resubscribed
(and cleared it)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from actors.redis_conn import connect

CHANNEL = "neuroapi:invalidate"
PING_EVERY_S = 1.0
STALE_AFTER_S = 3.0
logger = logging.getLogger("neuroapi.invalidation")


class InvalidationTimeout(RuntimeError):
    """Some replica received the message but did not confirm in time."""


def _ack_key(message_id: str) -> str:
    return f"neuroapi:invalidate-ack:{message_id}"


async def broadcast(redis: aioredis.Redis, topic: str, subject: str, timeout_s: float = 10.0) -> int:
    """Tell every cache holder to drop ``subject`` under ``topic``; wait for all of them.

    Returns how many replicas confirmed. Call it after the authoritative change is written."""
    message_id = secrets.token_hex(12)
    ack_key = _ack_key(message_id)
    payload = json.dumps({"id": message_id, "topic": topic, "subject": subject})
    receivers = await redis.publish(CHANNEL, payload)
    deadline = time.monotonic() + timeout_s
    confirmed = 0
    try:
        while confirmed < receivers:
            remaining = deadline - time.monotonic()
            popped = await redis.blpop([ack_key], timeout=max(remaining, 0.01)) if remaining > 0 else None
            if popped is None:
                raise InvalidationTimeout(
                    f"{receivers - confirmed} of {receivers} replicas did not confirm the change"
                )
            confirmed += 1
    finally:
        await redis.delete(ack_key)
    return confirmed


class InvalidationListener:
    """Subscribes for as long as the replica lives; calls ``on_message(topic, subject)`` for
    each invalidation and ``on_reset()`` whenever messages may have been missed."""

    def __init__(
        self,
        redis_url: str,
        on_message: Callable[[str, str], None],
        on_reset: Callable[[], None],
    ):
        self._redis_url = redis_url
        self._on_message = on_message
        self._on_reset = on_reset
        self._subscribed = False
        self._last_heard = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._subscribed and time.monotonic() - self._last_heard < STALE_AFTER_S

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the connection, or Redis itself
                logger.warning("invalidation subscription lost (%s); cache bypassed", type(error).__name__)
            finally:
                self._subscribed = False
                self._on_reset()
            await asyncio.sleep(0.5)

    async def _listen_once(self) -> None:
        client = connect(self._redis_url)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            last_ping = 0.0
            while True:
                now = time.monotonic()
                if now - last_ping >= PING_EVERY_S:
                    await pubsub.ping()
                    last_ping = now
                if self._subscribed and now - self._last_heard > STALE_AFTER_S:
                    raise TimeoutError("no answer from Redis")
                message = await pubsub.get_message(timeout=PING_EVERY_S)
                if message is None:
                    continue
                self._last_heard = time.monotonic()
                kind = message["type"]
                if kind == "subscribe":
                    self._on_reset()  # anything cached before now may have missed a message
                    self._subscribed = True
                elif kind == "message":
                    item = json.loads(message["data"])
                    self._on_message(item["topic"], item["subject"])
                    await client.rpush(_ack_key(item["id"]), 1)
                    await client.expire(_ack_key(item["id"]), 60)
        finally:
            await pubsub.aclose()
            await client.aclose()
