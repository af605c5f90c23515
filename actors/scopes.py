"""Per-account scope: which backends may ever see an account's traffic.

A compliance customer can pin its traffic to in-house models (``in_house_only``) or exclude
named third-party providers. The scope is stored with the account, travels with every verified
key (so the ingress decides without a hop), and is enforced where the attempt order is made
(``actors.routing.attempt_order``) and again by each provider proxy before it opens a
connection. Operators change it (CLI or admin API); each change is written and recorded in the
audit stream (who, when, what: never customer content), then every replica that caches
verified keys drops that account's entries and confirms before the change returns."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from actors.accounts import account_key
from actors.invalidation import broadcast

ACCOUNT_TOPIC = "account"  # subject: an account id whose cached keys must be dropped
AUDIT_STREAM = "neuroapi:audit"
AUDIT_MAX_ENTRIES = 1_000_000
IN_HOUSE_FIELD, EXCLUDED_FIELD = "scope_in_house_only", "scope_excluded_providers"


@dataclass(frozen=True, slots=True)
class Scope:
    in_house_only: bool = False
    excluded_providers: frozenset[str] = frozenset()

    def allows(self, provider: str, in_house: bool) -> bool:
        if self.in_house_only and not in_house:
            return False
        return provider not in self.excluded_providers

    @property
    def restricted(self) -> bool:
        return self.in_house_only or bool(self.excluded_providers)

    def rule(self) -> str:
        """The rule in words, for errors and the CLI; never names a provider that would have served."""
        if self.in_house_only:
            return "in-house models only"
        if self.excluded_providers:
            return "excluded third-party providers"
        return "no restriction"

    def as_dict(self) -> dict:
        return {"in_house_only": self.in_house_only, "excluded_providers": sorted(self.excluded_providers)}

    def to_fields(self) -> dict[str, str]:
        return {IN_HOUSE_FIELD: "1" if self.in_house_only else "0",
                EXCLUDED_FIELD: ",".join(sorted(self.excluded_providers))}

    @classmethod
    def from_fields(cls, in_house_only: str | None, excluded: str | None) -> Scope:
        return cls(in_house_only == "1", frozenset(filter(None, (excluded or "").split(","))))


UNRESTRICTED = Scope()


class ScopeError(ValueError):
    """A scope naming a provider the catalog does not have."""


def checked(scope: Scope, known_providers: set[str]) -> Scope:
    unknown = sorted(scope.excluded_providers - known_providers)
    if unknown:
        raise ScopeError(f"unknown provider(s): {', '.join(unknown)} (known: {', '.join(sorted(known_providers))})")
    return scope


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
        await self._redis.xadd(AUDIT_STREAM, {
            "at": str(int(time.time())), "actor": actor, "action": "scope.set", "account_id": account_id,
            "before": json.dumps(before.as_dict()), "after": json.dumps(scope.as_dict()),
        }, maxlen=AUDIT_MAX_ENTRIES, approximate=True)
        return await broadcast(self._redis, ACCOUNT_TOPIC, account_id)

    async def audit(self, account_id: str | None = None, count: int = 100) -> list[dict[str, str]]:
        """The newest audit entries first (optionally for one account)."""
        entries = await self._redis.xrevrange(AUDIT_STREAM, count=count if account_id is None else 10 * count)
        found = [{"id": entry_id, **fields} for entry_id, fields in entries
                 if account_id is None or fields.get("account_id") == account_id]
        return found[:count]
