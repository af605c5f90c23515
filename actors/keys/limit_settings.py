"""Changing limits (issue 19): a key's (owner or operator) and an account's monthly budget.

Like scope changes (``actors.routing.scopes``): write the record, audit (who, what, the new
values; never a secret), then ``core.invalidation.broadcast`` so every replica that caches
verified keys drops the key (``KEYS_TOPIC``, its prefix) or all the account's keys
(``ACCOUNT_TOPIC``, its id) and confirms. When a setter returns, the next request of the key on
any replica is verified anew and carries the new ``VerifiedKey.limits``. A setter raises
``InvalidationTimeout`` when a replica did not confirm in time: stored and audited, not confirmed."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from actors.accounts.store import ACCOUNT_BUDGET_FIELD, AccountError, account_key
from actors.keys.limit_records import (CEILING_FIELD, OWN_FIELD, changed, decode, decode_budget, effective, encode,
                                       within)
from actors.keys.store import KEYS_TOPIC, key_record_key
from actors.limits.store import LimitStore
from actors.metering.record import current_month
from actors.metering.usage_store import UsageStore
from actors.routing.scopes import ACCOUNT_TOPIC
from core.audit import audit
from core.invalidation import broadcast
from core.key_format import PREFIX_PATTERN
from core.limits import Limits, LimitsError
from core.money import cost_units_text

@dataclass(frozen=True)
class KeyLimits:
    """A key's two layers and what its calls are held to."""

    prefix: str
    account_id: str
    own: Limits
    ceiling: Limits
    effective: Limits


def _audit_value(limits: Limits) -> str:
    data = limits.as_dict()
    del data["account_monthly_budget_cost_units"]
    return json.dumps(data, sort_keys=True)


class LimitSettings:
    def __init__(self, redis: aioredis.Redis):
        self._redis = redis

    async def key_limits(self, prefix: str) -> KeyLimits:
        """Raises LookupError (not a prefix, no such key)."""
        if not PREFIX_PATTERN.fullmatch(prefix):
            raise LookupError("not a key prefix (neuro_ and 8 characters)")
        account_id, own, ceiling = await self._redis.hmget(key_record_key(prefix), "account_id", OWN_FIELD,
                                                          CEILING_FIELD)
        if account_id is None:
            raise LookupError("no key with this prefix")
        budget = decode_budget(await self._redis.hget(account_key(account_id), ACCOUNT_BUDGET_FIELD))
        own_limits, ceiling_limits = decode(own), decode(ceiling)
        return KeyLimits(prefix, account_id, own_limits, ceiling_limits,
                         effective(own_limits, ceiling_limits, budget))

    async def set_ceiling(self, prefix: str, ceiling: Limits, actor: str) -> tuple[KeyLimits, int]:
        """An operator's limits for a key (replacing the ceiling it had). Returns (the key's
        limits now, replicas that confirmed). Raises LookupError."""
        current = await self.key_limits(prefix)
        return await self._store(current, CEILING_FIELD, _key_only(ceiling), actor, "key.limits")

    async def update_ceiling(self, prefix: str, changes: dict, actor: str, clear: bool = False
                             ) -> tuple[KeyLimits, int]:
        """The CLI's form: change the named fields (None clears one) of the operator's limits,
        or start from none with ``clear``. Raises LookupError, LimitsError."""
        current = await self.key_limits(prefix)
        new = changed(Limits() if clear else current.ceiling, changes)
        return await self._store(current, CEILING_FIELD, new, actor, "key.limits")

    async def update_own(self, account_id: str, prefix: str, changes: dict, actor: str) -> tuple[KeyLimits, int]:
        """An account owner's change to one of its keys: the named fields (None clears one).
        Raises LookupError (no such key of this account: the caller answers 404, never saying
        whether another account has it), LimitsError, CeilingExceeded (above the operator's)."""
        current = await self.key_limits(prefix)
        if current.account_id != account_id:
            raise LookupError("no key with this prefix")
        new = changed(current.own, changes)
        within(new, current.ceiling)
        return await self._store(current, OWN_FIELD, new, actor, "key.limits.owner")

    async def _store(self, current: KeyLimits, field: str, limits: Limits, actor: str,
                     action: str) -> tuple[KeyLimits, int]:
        record = key_record_key(current.prefix)
        value = encode(limits)
        if value:
            await self._redis.hset(record, field, value)
        else:
            await self._redis.hdel(record, field)
        layer = "operator" if field == CEILING_FIELD else "owner"
        await audit(self._redis, actor, action, account_id=current.account_id, prefix=current.prefix,
                    layer=layer, after=_audit_value(limits))
        confirmed = await broadcast(self._redis, KEYS_TOPIC, current.prefix)
        return await self.key_limits(current.prefix), confirmed

    async def account_budget(self, account_id: str) -> int | None:
        """Micro cost_units, None for none. Raises AccountError (no such account)."""
        if not account_id or not await self._redis.exists(account_key(account_id)):
            raise AccountError("no such account")
        return decode_budget(await self._redis.hget(account_key(account_id), ACCOUNT_BUDGET_FIELD))

    async def set_account_budget(self, account_id: str, budget_micro: int | None, actor: str) -> int:
        """An operator's monthly budget for the account, across its keys (None: none). Returns
        the replicas that confirmed. Raises AccountError, LimitsError."""
        await self.account_budget(account_id)
        Limits(account_budget_micro=budget_micro)  # the same bounds as every budget
        if budget_micro is None:
            await self._redis.hdel(account_key(account_id), ACCOUNT_BUDGET_FIELD)
        else:
            # Set mid-month, the budget counts what the account already spent this month (its
            # metering counters; raised only, so calls the engine counted already stay counted).
            month = current_month(int(time.time() * 1000))  # the metering's month, as it counts it
            spent = (await UsageStore(self._redis).month(account_id, month))["cost_micro_units"]
            await LimitStore(self._redis).seed_month(account_id=account_id, spent_micro=spent, month=month)
            await self._redis.hset(account_key(account_id), ACCOUNT_BUDGET_FIELD, str(budget_micro))
        await audit(self._redis, actor, "account.budget", account_id=account_id,
                    after="" if budget_micro is None else cost_units_text(budget_micro))
        return await broadcast(self._redis, ACCOUNT_TOPIC, account_id)


def _key_only(limits: Limits) -> Limits:
    if limits.account_budget_micro is not None:
        raise LimitsError("an account's budget is set on the account, not on a key")
    return limits
