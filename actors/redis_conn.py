"""One way to open Redis, so every process talks to it with the same options."""

from __future__ import annotations

import redis.asyncio as aioredis


def connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, decode_responses=True, health_check_interval=10, socket_connect_timeout=5
    )
