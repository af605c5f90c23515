"""One way to open Redis, so every process talks to it with the same options."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, *, socket_timeout: float | None = None, retries: int | None = None) -> aioredis.Redis:
    """``socket_timeout`` bounds every reply (None: wait as long as Redis takes); ``retries``
    replaces redis-py's own retries on connection errors (0 for callers that retry themselves)."""
    options: dict = {}
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries)
    return aioredis.Redis.from_url(
        url, decode_responses=True, health_check_interval=10, socket_connect_timeout=5,
        socket_timeout=socket_timeout, **options,
    )
