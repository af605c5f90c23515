"""Scope administration, shared by the router deployment (admin API) and the CLI: find the
account by email, check a new scope against the providers the caller knows, store and broadcast
it (``actors.routing.scopes``). Failures are domain errors; each caller words them its own way."""

from __future__ import annotations

import redis.asyncio as aioredis

from actors.accounts.store import AccountStore
from actors.routing.scopes import ScopeStore
from core.scope import Scope, checked


class ScopeService:
    """``known_providers``: the names a scope may exclude (the router also counts the in-house
    provider; the CLI only the configured third parties)."""

    def __init__(self, redis: aioredis.Redis, known_providers: set[str]):
        self._accounts, self._scopes = AccountStore(redis), ScopeStore(redis)
        self._known = set(known_providers)

    async def lookup(self, email: str) -> tuple[str, Scope]:
        """(account id, its scope). Raises AccountError (a bad email, or no such account)."""
        account = await self._accounts.require(email)
        return account.id, await self._scopes.get(account.id)

    async def set(self, email: str, scope: Scope, actor: str) -> tuple[str, int]:
        """(account id, replicas that confirmed) once every replica routes under ``scope``.

        Raises AccountError (checked first), ScopeError (a provider not known: nothing stored),
        InvalidationTimeout (stored and audited, but not every replica confirmed in time)."""
        account = await self._accounts.require(email)
        return account.id, await self._scopes.set(account.id, checked(scope, self._known), actor)
