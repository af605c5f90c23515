"""Per-source limits, counted cluster-wide in Redis (``actors.accounts.sliding_window``): failed
authentication (at most ``limit`` failures per address in any sliding ``window_s``; once
reached, the address is blocked until the oldest failure leaves the window) and sign-ups.

Keyed by address only: never by the presented key, which could be anything. The address is
reduced to its canonical IP form (``source_bucket``), and anything that is not an IP shares
one bucket, so no caller-written text ever becomes part of a Redis key name."""

from __future__ import annotations

import ipaddress

import redis.asyncio as aioredis

from actors.accounts.sliding_window import SlidingWindowLimit, Verdict

__all__ = ["FailedAuthThrottle", "SignupThrottle", "Verdict", "failures_key", "signups_key", "source_bucket"]

NOT_AN_IP = "not-an-ip"  # the one bucket for every source that is not an IP address


def source_bucket(address: str | None) -> str:
    """The canonical form of an IP address (``2001:DB8::0a`` → ``2001:db8::a``), else ``NOT_AN_IP``."""
    try:
        return str(ipaddress.ip_address((address or "").strip()))
    except ValueError:
        return NOT_AN_IP


FAILURES_PREFIX = "neuroapi:auth-failures:"
SIGNUPS_PREFIX = "neuroapi:signups:"


def failures_key(address: str) -> str:
    return FAILURES_PREFIX + source_bucket(address)


def signups_key(address: str) -> str:
    return SIGNUPS_PREFIX + source_bucket(address)


class FailedAuthThrottle:
    def __init__(self, redis: aioredis.Redis, limit: int = 20, window_s: float = 60.0):
        self.limit = limit
        self.window_s = window_s
        self._window = SlidingWindowLimit(redis, FAILURES_PREFIX, limit, window_s)

    async def record_failure(self, address: str) -> Verdict:
        return await self._window.record(source_bucket(address))

    async def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again (0 when it may now)."""
        return await self._window.blocked_for(source_bucket(address))


class SignupThrottle:
    """At most ``limit`` sign-up attempts per address in any sliding ``window_s``: each one
    costs a bcrypt hash and an account, so a flood from one source stops at the limit."""

    def __init__(self, redis: aioredis.Redis, limit: int = 10, window_s: float = 3600.0):
        self._window = SlidingWindowLimit(redis, SIGNUPS_PREFIX, limit, window_s)

    async def admit(self, address: str) -> Verdict:
        """Count this attempt; ``verdict.counted`` is False when the address is over its limit."""
        return await self._window.record(source_bucket(address))
