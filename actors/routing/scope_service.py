"""Scope administration, shared by the router deployment (admin API) and the CLI: check a new
scope against the providers the caller knows, store and broadcast it (``actors.routing.scopes``).
Failures are domain errors; each caller words them its own way.

Accounts are named by id here. Operators name them by email, and the email index is keyed with
key material (``actors.accounts.sealing``) that the router does not hold: the admin API asks
the verifier pool for the id first, the CLI looks it up with its own key material."""

from __future__ import annotations

import redis.asyncio as aioredis

from actors.accounts.store import AccountError, account_key
from actors.routing.scopes import ScopeStore
from core.scope import Scope, checked


class ScopeService:
    """``known_providers``: the names a scope may exclude (the router also counts the in-house
    provider; the CLI only the configured third parties)."""

    def __init__(self, redis: aioredis.Redis, known_providers: set[str]):
        self._redis, self._scopes = redis, ScopeStore(redis)
        self._known = set(known_providers)

    async def _require(self, account_id: str) -> None:
        if not account_id or not await self._redis.exists(account_key(account_id)):
            raise AccountError("no such account")

    async def lookup(self, account_id: str) -> tuple[str, Scope]:
        """(account id, its scope). Raises AccountError (no such account)."""
        await self._require(account_id)
        return account_id, await self._scopes.get(account_id)

    async def set(self, account_id: str, scope: Scope, actor: str) -> tuple[str, int]:
        """(account id, replicas that confirmed) once every replica routes under ``scope``.

        Raises AccountError (checked first), ScopeError (a provider not known: nothing stored),
        InvalidationTimeout (stored and audited, but not every replica confirmed in time)."""
        await self._require(account_id)
        return account_id, await self._scopes.set(account_id, checked(scope, self._known), actor)
