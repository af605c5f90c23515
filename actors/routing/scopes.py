"""Per-account scope: which backends may ever see an account's traffic.

A compliance customer can pin its traffic to in-house models (``in_house_only``) or exclude
named third-party providers. The scope is stored with the account, travels with every verified
key (so the ingress decides without a hop), and is enforced where the attempt order is made
(``actors.routing.table.attempt_order``) and again by each provider proxy before it opens a
connection. Operators change it (CLI or admin API); each change is written and recorded in the
audit stream (who, when, what: never customer content), then every replica that caches
verified keys drops that account's entries and confirms before the change returns."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from actors.accounts.store import account_key
from core.audit import audit
from core.invalidation import broadcast
from core.scope import EXCLUDED_FIELD, IN_HOUSE_FIELD, Scope

ACCOUNT_TOPIC = "account"  # subject: an account id whose cached keys must be dropped


class ScopeStore:
    def __init__(self, redis: aioredis.Redis):
        self._redis = redis

    async def get(self, account_id: str) -> Scope:
        return Scope.from_fields(*await self._redis.hmget(account_key(account_id), IN_HOUSE_FIELD, EXCLUDED_FIELD))

    async def set(self, account_id: str, scope: Scope, actor: str) -> int:
        """Store, make every replica forget what it cached for the account, then audit.

        Returns how many replicas confirmed. When this returns, the next request of the account
        on any replica is routed under the new scope."""
        before = await self.get(account_id)
        await self._redis.hset(account_key(account_id), mapping=scope.to_fields())
        await audit(self._redis, actor, "scope.set", account_id=account_id,
                    before=json.dumps(before.as_dict()), after=json.dumps(scope.as_dict()))
        return await broadcast(self._redis, ACCOUNT_TOPIC, account_id)
