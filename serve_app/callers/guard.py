"""Failed-authentication accounting for one ingress replica.

Counts are cluster-wide in Redis (``actors.accounts.throttle``); blocks are also kept locally, so
a blocked address is refused without a Redis read or a verifier hop. The attempt that reaches
the limit tells every replica (a broadcast on the invalidation channel), and a replica that
hears of a block adds it here (``block``).

A block refuses what can be guessed (keys this replica has not verified, passwords, session
and admin tokens); the ingress still serves an API key it has already verified, so one source
cannot lock out callers who share its address (the check is the ingress's, ``blocked_for``)."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence

import redis.asyncio as aioredis

from actors.accounts.throttle import FailedAuthThrottle, source_bucket
from core.errors import GatewayError
from core.invalidation import InvalidationTimeout, broadcast
from core.redis_conn import UNREACHABLE
from serve_app.callers.client_address import Network, client_address
from serve_app.callers.local_window import LocalSlidingWindow

BLOCKS_TOPIC = "auth-block"  # subject: "<address> <seconds blocked>"
MAX_LOCAL_BLOCKS = 100_000  # beyond, the blocks ending soonest are forgotten (Redis still refuses them)
logger = logging.getLogger("neuroapi.ingress")


def too_many_failures(retry_after: str) -> GatewayError:
    return GatewayError(429, "Too many failed authentication attempts from this address; retry after "
                        f"{retry_after} s.", code="too_many_failed_attempts", headers={"Retry-After": retry_after})


def too_many_signups(retry_after: str) -> GatewayError:
    return GatewayError(429, f"Too many sign-ups from this address; retry after {retry_after} s.",
                        code="too_many_signups", headers={"Retry-After": retry_after})


class FailedAuthGuard:
    def __init__(self, redis: aioredis.Redis, trusted_proxies: Sequence[Network], limit: int, window_s: float):
        self._redis = redis
        self._trusted_proxies = trusted_proxies
        self._throttle = FailedAuthThrottle(redis, limit, window_s)
        self._local = LocalSlidingWindow(limit, window_s)  # used only while Redis is unreachable
        # address → monotonic time the block ends, in the order blocks were added (about the
        # order they end: every block lasts at most one window)
        self._blocked_until: OrderedDict[str, float] = OrderedDict()

    def address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The caller's address in canonical form (``source_bucket``: not an IP → one bucket)."""
        return source_bucket(client_address(peer, forwarded_for, self._trusted_proxies))

    def source(self, peer: str | None, forwarded_for: str | None) -> str:
        """The caller's address; raises 429 at once while it is blocked."""
        address = self.address(peer, forwarded_for)
        self.refuse_if_blocked(address)
        return address

    def blocked_for(self, address: str) -> float:
        """Seconds this replica knows ``address`` stays blocked (0: not blocked)."""
        until = self._blocked_until.get(address)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked_until[address]
            return 0.0
        return left

    def refuse_if_blocked(self, address: str) -> None:
        left = self.blocked_for(address)
        if left:
            raise too_many_failures(str(max(1, math.ceil(left))))

    def block(self, subject: str) -> None:
        """A block another replica announced (``BLOCKS_TOPIC``)."""
        address, _, seconds = subject.rpartition(" ")
        try:
            self._remember(source_bucket(address), float(seconds))
        except ValueError:
            logger.warning("ignored a malformed address block announcement")

    def _remember(self, address: str, seconds: float) -> None:
        if not 0 < seconds < math.inf:
            raise ValueError("not a block duration")
        self._blocked_until[address] = time.monotonic() + seconds
        self._blocked_until.move_to_end(address)
        while len(self._blocked_until) > MAX_LOCAL_BLOCKS:  # the oldest first: ended, or ending soonest
            self._blocked_until.popitem(last=False)

    async def failed(self, address: str, error: GatewayError) -> GatewayError:
        """Count a failed attempt; the error to answer with (429 once the address is blocked)."""
        try:
            verdict, shared = await self._throttle.record_failure(address), True
        except UNREACHABLE:  # Redis away: this replica counts alone meanwhile
            verdict, shared = self._local.record(address), False
        if not verdict.blocked_for_s:
            return error
        self._remember(address, verdict.blocked_for_s)
        if not verdict.counted:  # it was blocked already: refused, not counted
            return too_many_failures(verdict.retry_after)
        if not shared:
            return error
        try:  # this attempt reached the limit: every replica refuses the address from now on
            # Advisory (a replica that misses it still has Redis's count): no wait for cut-off leases.
            await broadcast(self._redis, BLOCKS_TOPIC, f"{address} {verdict.blocked_for_s}", timeout_s=2.0,
                            wait_for_leases=False)
        except InvalidationTimeout:
            logger.warning("a replica did not confirm an address block in time")
        return error
