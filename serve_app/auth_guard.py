"""Failed-authentication accounting for one ingress replica.

Counts are cluster-wide in Redis (``actors.auth_throttle``); blocks are also kept locally, so
a blocked address is refused without a Redis read. The attempt that reaches the limit tells
every replica (a broadcast on the invalidation channel), and a replica that hears of a block
adds it here (``block``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from actors.auth_throttle import FailedAuthThrottle
from actors.errors import GatewayError
from actors.invalidation import InvalidationTimeout, broadcast
from serve_app.client_address import Network, client_address

BLOCKS_TOPIC = "auth-block"  # subject: "<address> <seconds blocked>"
logger = logging.getLogger("neuroapi.ingress")


def too_many_failures(retry_after: str) -> GatewayError:
    return GatewayError(429, "Too many failed authentication attempts from this address; retry after "
                        f"{retry_after} s.", code="too_many_failed_attempts", headers={"Retry-After": retry_after})


class FailedAuthGuard:
    def __init__(self, redis: aioredis.Redis, trusted_proxies: Sequence[Network], limit: int, window_s: float):
        self._redis = redis
        self._trusted_proxies = trusted_proxies
        self._throttle = FailedAuthThrottle(redis, limit, window_s)
        self._blocked_until: dict[str, float] = {}  # address → monotonic time the block ends

    def source(self, peer: str | None, forwarded_for: str | None) -> str:
        """The caller's address; raises 429 at once while it is blocked."""
        address = client_address(peer, forwarded_for, self._trusted_proxies)
        until = self._blocked_until.get(address)
        if until is not None:
            if until > time.monotonic():
                raise too_many_failures(str(max(1, math.ceil(until - time.monotonic()))))
            del self._blocked_until[address]
        return address

    def block(self, subject: str) -> None:
        """A block another replica announced (``BLOCKS_TOPIC``)."""
        address, seconds = subject.rsplit(" ", 1)
        self._blocked_until[address] = time.monotonic() + float(seconds)

    async def failed(self, address: str, error: GatewayError) -> GatewayError:
        """Count a failed attempt; the error to answer with (429 once the address is blocked)."""
        verdict = await self._throttle.record_failure(address)
        if not verdict.blocked_for_s:
            return error
        self._blocked_until[address] = time.monotonic() + verdict.blocked_for_s
        if not verdict.counted:  # it was blocked already: refused, not counted
            return too_many_failures(verdict.retry_after)
        try:  # this attempt reached the limit: every replica refuses the address from now on
            await broadcast(self._redis, BLOCKS_TOPIC, f"{address} {verdict.blocked_for_s}", timeout_s=2.0)
        except InvalidationTimeout:
            logger.warning("a replica did not confirm an address block in time")
        return error
