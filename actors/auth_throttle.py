"""Failed-authentication throttling: at most ``limit`` failures per source address in any
sliding ``window_s``, counted cluster-wide in Redis.

One sorted set per address holds the times of its recent failures (Redis's own clock, so
every node agrees). Recording a failure trims the window, counts, and adds the failure in one
script; once ``limit`` failures are in the window the address is blocked until the oldest of
them leaves it, and attempts while blocked are refused without being counted (so the block
ends one window after the failures, whatever the caller keeps sending). Keyed by address
only: never by the presented key, which could be anything."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import redis.asyncio as aioredis

_RECORD = """
local now_ms = redis.call('TIME')
now_ms = tonumber(now_ms[1]) * 1000 + math.floor(tonumber(now_ms[2]) / 1000)
local window_ms = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
local count = redis.call('ZCARD', KEYS[1])
local counted = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window_ms)
  count = count + 1
  counted = 1
end
if count < limit then return {count, 0, counted} end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {count, tonumber(oldest[2]) + window_ms - now_ms, counted}
"""

_PEEK = """
local now_ms = redis.call('TIME')
now_ms = tonumber(now_ms[1]) * 1000 + math.floor(tonumber(now_ms[2]) / 1000)
local window_ms = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then return 0 end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window_ms - now_ms
"""


def failures_key(address: str) -> str:
    return f"neuroapi:auth-failures:{address}"


@dataclass(frozen=True)
class Verdict:
    failures: int  # in the window, including this one
    blocked_for_s: float  # 0 = not blocked; else seconds until the window allows again
    counted: bool  # False: the address was already blocked, so this attempt was refused uncounted

    @property
    def retry_after(self) -> str:
        """The Retry-After header value: whole seconds, rounded up."""
        return str(max(1, math.ceil(self.blocked_for_s)))


class FailedAuthThrottle:
    def __init__(self, redis: aioredis.Redis, limit: int = 20, window_s: float = 60.0):
        self.limit = limit
        self.window_s = window_s
        self._record = redis.register_script(_RECORD)
        self._peek = redis.register_script(_PEEK)

    async def record_failure(self, address: str) -> Verdict:
        count, blocked_ms, counted = await self._record(
            keys=[failures_key(address)],
            args=[int(self.window_s * 1000), self.limit, secrets.token_hex(8)])
        return Verdict(int(count), max(int(blocked_ms), 0) / 1000, bool(counted))

    async def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again (0 when it may now)."""
        blocked_ms = await self._peek(keys=[failures_key(address)], args=[int(self.window_s * 1000), self.limit])
        return max(int(blocked_ms), 0) / 1000
