"""Who is calling: an API key (from this replica's cache, a hop to the verifier pool on a miss),
a log-in session, or the admin token. Every failed attempt counts against the source address
(``serve_app.callers.guard``); key uses are batched to the verifier pool."""

# No "from __future__ import annotations": routers pass FastAPI's Request through here.
import asyncio
import hmac
import logging
import time

from fastapi import Request

from actors.accounts.sessions import Session
from actors.keys.store import VerifiedKey
from core.errors import GatewayError, invalid_api_key, invalid_session
from core.key_format import parse_key
from serve_app.callers.admin_token import AdminToken
from serve_app.callers.client_address import forwarded_for
from serve_app.callers.guard import FailedAuthGuard
from serve_app.callers.key_cache import VerifiedKeyCache, fingerprint
from serve_app.http import presented_key

logger = logging.getLogger("neuroapi.ingress")
KEY_USE_FLUSH_S = 5.0


class Authenticator:
    """``verifier``: the verifier pool (a handle whose GatewayError answers are raised);
    ``cache_state``: the invalidation listener (``cache_usable``, ``healthy``)."""

    def __init__(self, verifier, guard: FailedAuthGuard, keys: VerifiedKeyCache, cache_state,
                 admin_token: AdminToken):
        self._verifier = verifier
        self.guard = guard
        self.keys = keys
        self._cache_state = cache_state
        self._admin_token = admin_token
        self._key_uses: dict[str, int] = {}  # prefix → last use (unix s), flushed in batches

    def address(self, request: Request) -> str:
        """The caller's address (canonical), blocked or not."""
        return self.guard.address(request.client.host if request.client else None, forwarded_for(request.headers))

    def source(self, request: Request) -> str:
        """The caller's address, refused at once while it is blocked for failed attempts."""
        return self.guard.source(request.client.host if request.client else None, forwarded_for(request.headers))

    async def failed(self, address: str, error: GatewayError) -> GatewayError:
        return await self.guard.failed(address, error)

    async def api_key(self, request: Request) -> VerifiedKey:
        # A blocked address is still served a key this replica has verified (a key's secret cannot
        # be guessed, so this gives a guesser nothing, and callers sharing the address keep working);
        # anything else from it is refused here, before any lookup or hop.
        address = self.address(request)
        presented = presented_key(request)
        parsed = parse_key(presented) if presented else None
        if parsed is None:  # no key, or a checksum that does not match: no lookup at all
            self.guard.refuse_if_blocked(address)
            raise await self.failed(address, invalid_api_key())
        key_fingerprint = fingerprint(presented)
        # While Redis is away, keys verified before are served for a bounded time (core.invalidation).
        use_cache = self._cache_state.cache_usable
        verified = self.keys.get(parsed.prefix, key_fingerprint) if use_cache else None
        if verified is None:
            self.guard.refuse_if_blocked(address)
            generation = self.keys.generation
            verified = await self._verifier.verify.remote(presented)
            if verified is None:
                logger.info("key %s rejected: unknown, wrong secret, revoked or account disabled", parsed.prefix)
                raise await self.failed(address, invalid_api_key())
            if self._cache_state.healthy:  # cached only while invalidations are heard
                self.keys.put(key_fingerprint, verified, generation)
        self._key_uses[verified.prefix] = int(time.time())
        return verified

    async def session(self, request: Request) -> Session:
        """The caller's live session, for account endpoints."""
        address = self.source(request)
        token = presented_key(request) or ""
        session = await self._verifier.session.remote(token) if token else None
        if session is None:
            raise await self.failed(address, invalid_session())
        return session

    async def admin(self, request: Request) -> str:
        """The audit actor for an admin call with the right token."""
        address = self.source(request)
        if not self._admin_token.on:
            raise GatewayError(403, f"The admin API is off: {self._admin_token.off_because}.",
                               type="permission_error", code="admin_disabled")
        presented = (presented_key(request) or "").encode()
        if not hmac.compare_digest(presented, self._admin_token.value):
            raise await self.failed(address, GatewayError(401, "Invalid admin token.", code="invalid_admin_token"))
        return f"admin-api from {address}"

    async def flush_key_uses_forever(self) -> None:
        while True:
            await asyncio.sleep(KEY_USE_FLUSH_S)
            uses, self._key_uses = self._key_uses, {}
            if uses:
                try:
                    await self._verifier.record_key_uses.remote(uses)
                except Exception as error:  # "last used" is advisory; the next batch tries again
                    logger.warning("could not record key uses: %s", type(error).__name__)
