"""Per-account billing state in Redis.

Layout:

- ``neuroapi:account:<id>`` (the account hash, ``actors.accounts.store.account_key``): only its
  ``stripe_customer_id`` and ``stripe_subscription_id`` fields, written only through this class.
- ``neuroapi:billing:<id>`` (hash): ``status`` ("none" or a Stripe subscription status),
  ``status_at`` (the Stripe event ``created`` time the status came from: its version),
  ``status_since`` (when the current status began: past_due's grace counts from here),
  ``period_start``/``period_end`` (the subscription's current period, unix seconds),
  ``billed_from_micro``/``billed_from_month`` (the month's usage when the subscription began:
  used on the free tier, never billed).
- ``neuroapi:billing-by-customer:<customer_id>`` (string): the account id (webhooks name customers).
- ``neuroapi:billing-accounts`` (set): every account with a customer or a status (the reporter's list).
- ``neuroapi:billing-event:<event_id>`` (string, ``EVENT_TTL_S``): a Stripe event already applied.

A status change and its event mark are written in one MULTI under WATCH, so an event is applied
once and a crash between the two cannot happen (a redelivery after a crash applies it then)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from actors.accounts.store import AccountError, account_key

SUBSCRIBED = frozenset({"active", "trialing", "past_due"})  # a subscription that still bills
TERMINAL = frozenset({"canceled", "incomplete_expired"})  # a subscription id that never comes back
EVENT_TTL_S = 30 * 86400  # Stripe retries a webhook for up to 3 days; a margin on top
ACCOUNTS_KEY = "neuroapi:billing-accounts"

_CUSTOMER = "stripe_customer_id"
_SUBSCRIPTION = "stripe_subscription_id"
_INT_FIELDS = ("status_at", "status_since", "period_start", "period_end", "billed_from_micro")


def billing_key(account_id: str) -> str:
    return f"neuroapi:billing:{account_id}"


def customer_index_key(customer_id: str) -> str:
    return f"neuroapi:billing-by-customer:{customer_id}"


def event_key(event_id: str) -> str:
    return f"neuroapi:billing-event:{event_id}"


@dataclass(frozen=True)
class BillingState:
    customer_id: str = ""
    subscription_id: str = ""
    status: str = "none"
    status_at: int = 0
    status_since: int = 0
    period_start: int = 0
    period_end: int = 0
    billed_from_micro: int = 0
    billed_from_month: str = ""

    @property
    def subscribed(self) -> bool:
        return self.status in SUBSCRIBED

    def unbilled_micro(self, month: str) -> int:
        """Usage of ``month`` (YYYY-MM) that accrued before the subscription began: not billed."""
        return self.billed_from_micro if month == self.billed_from_month else 0


_STATE_FIELDS = [f.name for f in fields(BillingState) if f.name not in ("customer_id", "subscription_id")]

# Set the customer of an existing account only; move the index off a replaced customer id.
_SET_CUSTOMER = """
-- KEYS[1] account hash  KEYS[2] new customer index  KEYS[3] accounts set
-- ARGV[1] customer id  ARGV[2] account id  ARGV[3] index key prefix
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], 'stripe_customer_id')
if old and old ~= '' and old ~= ARGV[1] then redis.call('DEL', ARGV[3] .. old) end
redis.call('HSET', KEYS[1], 'stripe_customer_id', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""


def _state_from(account: list[str | None], billing: dict[str, str]) -> BillingState:
    values: dict = {"customer_id": account[0] or "", "subscription_id": account[1] or ""}
    for name in _STATE_FIELDS:
        if name in billing:
            values[name] = int(billing[name]) if name in _INT_FIELDS else billing[name]
    return BillingState(**values)


class BillingStore:
    def __init__(self, redis: aioredis.Redis):
        self._redis = redis
        self._set_customer = redis.register_script(_SET_CUSTOMER)

    async def customer_id(self, account_id: str) -> str:
        """The account's Stripe customer id; "" when it has none yet."""
        return await self._redis.hget(account_key(account_id), _CUSTOMER) or ""

    async def set_customer(self, account_id: str, customer_id: str) -> None:
        """Record the account's Stripe customer (raises AccountError for an unknown account, so
        no half account hash is ever made)."""
        if not customer_id:
            raise ValueError("a customer id is required")
        done = await self._set_customer(
            keys=[account_key(account_id), customer_index_key(customer_id), ACCOUNTS_KEY],
            args=[customer_id, account_id, customer_index_key("")])
        if not done:
            raise AccountError("no such account")

    async def account_for_customer(self, customer_id: str) -> str | None:
        if not customer_id:
            return None
        return await self._redis.get(customer_index_key(customer_id))

    async def accounts(self) -> list[str]:
        """Every account with a customer or a subscription status (in no particular order)."""
        return sorted(await self._redis.smembers(ACCOUNTS_KEY))

    async def state(self, account_id: str) -> BillingState:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(account_key(account_id), [_CUSTOMER, _SUBSCRIPTION])
            pipe.hgetall(billing_key(account_id))
            account, billing = await pipe.execute()
        return _state_from(account, billing)

    async def update_once(self, event_id: str, account_id: str,
                          decide: Callable[[BillingState], BillingState | None],
                          ) -> tuple[BillingState, BillingState] | None:
        """Apply Stripe event ``event_id`` to the account exactly once: ``decide`` gets the
        current state and returns the new one (None: no change). The new state and the event
        mark are written together; an event already marked changes nothing. Returns (before,
        after) when something changed, else None."""
        mark = event_key(event_id)
        keys = (mark, account_key(account_id), billing_key(account_id))
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(*keys)
                    if await pipe.exists(mark):
                        return None  # a duplicate delivery
                    if not await pipe.exists(account_key(account_id)):
                        raise AccountError("no such account")
                    account = await pipe.hmget(account_key(account_id), [_CUSTOMER, _SUBSCRIPTION])
                    before = _state_from(account, await pipe.hgetall(billing_key(account_id)))
                    after = decide(before)
                    if after is not None:
                        # The customer id is never changed here (set_customer owns it and its index).
                        after = replace(after, customer_id=before.customer_id)
                    pipe.multi()
                    if after is not None and after != before:
                        pipe.hset(account_key(account_id), _SUBSCRIPTION, after.subscription_id)
                        pipe.hset(billing_key(account_id),
                                  mapping={name: getattr(after, name) for name in _STATE_FIELDS})
                        pipe.sadd(ACCOUNTS_KEY, account_id)
                    pipe.set(mark, account_id, ex=EVENT_TTL_S)
                    await pipe.execute()
                    return (before, after) if after is not None and after != before else None
                except WatchError:
                    continue  # another writer got in between: read again
