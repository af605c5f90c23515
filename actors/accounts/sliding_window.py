"""A cluster-wide sliding-window limit in Redis: at most ``limit`` events per subject in any
``window_s``.

One sorted set per subject holds the times of its recent events (Redis's own clock, so every
node agrees). Recording an event trims the window, counts, and adds the event in one script;
once ``limit`` events are in the window the subject is blocked until the oldest of them leaves
it, and events while blocked are refused without being counted (so the block ends one window
after the last counted event, whatever the caller keeps sending). Used for failed
authentication and for sign-ups, per source address (``actors.accounts.throttle``)."""

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


@dataclass(frozen=True)
class Verdict:
    events: int  # in the window, including this one
    blocked_for_s: float  # 0 = not blocked; else seconds until the window allows again
    counted: bool  # False: the subject was already blocked, so this event was refused uncounted

    @property
    def failures(self) -> int:  # the failed-auth reading of ``events``
        return self.events

    @property
    def retry_after(self) -> str:
        """The Retry-After header value: whole seconds, rounded up."""
        return str(max(1, math.ceil(self.blocked_for_s)))


class SlidingWindowLimit:
    """``key(subject)`` names the sorted set; the caller keeps subjects short and bounded."""

    def __init__(self, redis: aioredis.Redis, key_prefix: str, limit: int, window_s: float):
        self.limit = limit
        self.window_s = window_s
        self._key_prefix = key_prefix
        self._record = redis.register_script(_RECORD)
        self._peek = redis.register_script(_PEEK)

    def key(self, subject: str) -> str:
        return self._key_prefix + subject

    async def record(self, subject: str) -> Verdict:
        count, blocked_ms, counted = await self._record(
            keys=[self.key(subject)], args=[int(self.window_s * 1000), self.limit, secrets.token_hex(8)])
        return Verdict(int(count), max(int(blocked_ms), 0) / 1000, bool(counted))

    async def blocked_for(self, subject: str) -> float:
        """Seconds until ``subject`` may have another event (0 when it may now)."""
        blocked_ms = await self._peek(keys=[self.key(subject)], args=[int(self.window_s * 1000), self.limit])
        return max(int(blocked_ms), 0) / 1000
