"""One way to open Redis, so every process talks to it with the same options.

Reconnects are invisible to callers: after a Redis restart (or ``CLIENT KILL``) every pooled
connection is dead, and a command sent on one fails with "Connection closed by server" before
Redis ran it. redis-py retries such a command on a fresh connection only when the client was
given a ``Retry``: ``Redis(...)`` has one by default, but ``Redis.from_url`` (which builds the
pool itself) does not, so its connections default to no retry at all. Here every client gets
``RETRIES`` retries with jittered exponential backoff (``RETRY_BASE_S`` up to ``RETRY_CAP_S``):
about 1.5 s in all before the error reaches the caller, long enough for a stale pool and a
quick restart, short enough that a caller facing a Redis that is really down gets its 503 soon.
A retried write may in rare cases run twice (the connection died after Redis ran it): what we
write on the request path is idempotent or a counter where one extra is harmless."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What "Redis is out of reach" looks like to a client: retried here, a 503 for callers.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
RETRIES = 5
RETRY_BASE_S = 0.05
RETRY_CAP_S = 0.5


def default_retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=RETRY_BASE_S, cap=RETRY_CAP_S), RETRIES,
                 supported_errors=UNREACHABLE)


def connect(url: str, *, socket_timeout: float | None = None, retries: int | None = None,
            protocol: int | None = None, pool_size: int | None = None) -> aioredis.Redis:
    """``socket_timeout`` bounds every reply (None: wait as long as Redis takes); ``retries``
    replaces the default retries on connection errors (0 for callers that retry themselves);
    ``protocol`` 2 for a subscriber that PINGs with a payload (redis-py 8 parses a RESP3
    PONG in subscribed mode as a message of garbled type); ``pool_size``: at most this many
    connections, a command waiting (up to 5 s) for a free one rather than failing (redis-py's
    default pool raises past its 100)."""
    retry = default_retry() if retries is None else Retry(NoBackoff(), retries)
    options: dict = {} if protocol is None else {"protocol": protocol}
    if pool_size is not None:
        options |= {"connection_pool": aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=5, decode_responses=True, health_check_interval=10,
            socket_connect_timeout=5, socket_timeout=socket_timeout, retry=retry, **options)}
        return aioredis.Redis(**options)
    return aioredis.Redis.from_url(
        url, decode_responses=True, health_check_interval=10, socket_connect_timeout=5,
        socket_timeout=socket_timeout, retry=retry, **options,
    )


def redis_unavailable(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it, e.g. inside a Ray error) is Redis being unreachable."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UNREACHABLE):
            return True
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return False
