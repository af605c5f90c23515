"""Per-account billing state in Redis.

Layout:

- ``neuroapi:account:<id>`` (the account hash, ``actors.accounts.store.account_key``): only its
  Stripe fields, written only through this class. The ids are sealed at rest like the email
  (``actors.accounts.sealing``): ``stripe_customer_sealed`` and ``stripe_subscription_sealed``
  (``v<N>:<Fernet token>`` under envelope key N), and ``stripe_customer_index``, the name of the
  customer's index key (the purge deletes it by this name, with no key material).
- ``neuroapi:billing:<id>`` (hash): ``status`` ("none" or a Stripe subscription status),
  ``status_at`` (the Stripe event ``created`` time the status came from: its version),
  ``status_since`` (when the current status began: past_due's grace counts from here),
  ``period_start``/``period_end`` (the subscription's current period, unix seconds),
  ``billed_from_micro``/``billed_from_month`` (the month's usage when the subscription began:
  used on the free tier, never billed). After a purge it also keeps the sealed ids
  (``actors.accounts.deletion``).
- ``neuroapi:billing-by-customer:v<P>:<hmac>`` (string): the account id (webhooks name
  customers); the name is an HMAC of the customer id under pepper P, so it reveals no id.
- ``neuroapi:billing-accounts`` (set): every account with a customer or a status (the reporter's list).
- ``neuroapi:billing-event:<event_id>`` (string, ``EVENT_TTL_S``): a Stripe event already applied.

Opening and sealing the ids, and naming the index, need key material: a store given an
``AccountSealer`` (the verifier pool, the CLI) does all of it; a store without one (the ingress's
gate and overview) reads the status fields only, its ids "". Ids written before sealing
(plaintext ``stripe_customer_id``/``stripe_subscription_id``, the index
``neuroapi:billing-by-customer:<customer id>``) are read as they are and moved on the next touch
(``customer_id``, ``account_for_customer``, ``update_once``) or by the rotation migration
(``reseal``, ``reseal_retained``), each with one compare-and-set.

A status change and its event mark are written in one MULTI under WATCH, so an event is applied
once and a crash between the two cannot happen (a redelivery after a crash applies it then)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from actors.accounts.sealing import (CUSTOMER_INDEX_PREFIX, AccountSealer, SealError, index_version,
                                     legacy_customer_index_key, sealed_version)
from actors.accounts.store import AccountError, Resealed, account_key

SUBSCRIBED = frozenset({"active", "trialing", "past_due"})  # a subscription that still bills
TERMINAL = frozenset({"canceled", "incomplete_expired"})  # a subscription id that never comes back
EVENT_TTL_S = 30 * 86400  # Stripe retries a webhook for up to 3 days; a margin on top
ACCOUNTS_KEY = "neuroapi:billing-accounts"

# The Stripe fields of the account hash (and of a purged account's billing hash).
CUSTOMER_SEALED, CUSTOMER_INDEX = "stripe_customer_sealed", "stripe_customer_index"
SUBSCRIPTION_SEALED = "stripe_subscription_sealed"
LEGACY_CUSTOMER, LEGACY_SUBSCRIPTION = "stripe_customer_id", "stripe_subscription_id"  # before sealing
ID_FIELDS = (CUSTOMER_SEALED, CUSTOMER_INDEX, LEGACY_CUSTOMER, SUBSCRIPTION_SEALED, LEGACY_SUBSCRIPTION)
_INT_FIELDS = ("status_at", "status_since", "period_start", "period_end", "billed_from_micro")


def billing_key(account_id: str) -> str:
    return f"neuroapi:billing:{account_id}"


def customer_index_of(stored: dict[str, str]) -> str | None:
    """The name of the account's customer index, from its hash alone (no key material): the
    purge deletes it by this. Ids from before sealing name it by the plaintext customer id."""
    if stored.get(CUSTOMER_INDEX):
        return stored[CUSTOMER_INDEX]
    if stored.get(LEGACY_CUSTOMER):
        return legacy_customer_index_key(stored[LEGACY_CUSTOMER])
    return None


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

# Set the customer of an existing account only (no half account hash is ever made); move the
# index off a replaced customer (or off its pre-sealing name), the plaintext field with it.
_SET_CUSTOMER = """
-- KEYS[1] account hash  KEYS[2] new customer index  KEYS[3] accounts set
-- ARGV[1] sealed customer id  ARGV[2] account id  ARGV[3] the pre-sealing index prefix
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], 'stripe_customer_index')
if not old or old == '' then
  local plain = redis.call('HGET', KEYS[1], 'stripe_customer_id')
  if plain and plain ~= '' then old = ARGV[3] .. plain end
end
if old and old ~= '' and old ~= KEYS[2] and redis.call('GET', old) == ARGV[2] then
  redis.call('DEL', old)
end
redis.call('HSET', KEYS[1], 'stripe_customer_sealed', ARGV[1], 'stripe_customer_index', KEYS[2])
redis.call('HDEL', KEYS[1], 'stripe_customer_id')
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

# Move one hash's Stripe ids to the current seal (and, for an account, its index to the current
# name), only if its id fields are as read.
_RESEAL = """
-- KEYS[1] the hash  KEYS[2] index now  KEYS[3] index wanted
-- ARGV[1] account id  ARGV[2] '1': move the index  ARGV[3..6] as read: customer sealed,
-- plaintext customer, subscription sealed, plaintext subscription  ARGV[7..8] new sealed ids
local read = {'stripe_customer_sealed', 'stripe_customer_id', 'stripe_subscription_sealed', 'stripe_subscription_id'}
for i = 1, 4 do
  if (redis.call('HGET', KEYS[1], read[i]) or '') ~= ARGV[2 + i] then return 0 end
end
if ARGV[2] == '1' then
  if KEYS[2] ~= KEYS[3] then
    local holder = redis.call('GET', KEYS[3])
    if holder and holder ~= ARGV[1] then return -1 end
    if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
    redis.call('SET', KEYS[3], ARGV[1])
  end
  redis.call('HSET', KEYS[1], 'stripe_customer_index', KEYS[3])
end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'stripe_customer_sealed', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'stripe_subscription_sealed', ARGV[8]) end
redis.call('HDEL', KEYS[1], 'stripe_customer_id', 'stripe_subscription_id')
return 1
"""


def _state_from(ids: tuple[str, str], billing: dict[str, str]) -> BillingState:
    values: dict = {"customer_id": ids[0], "subscription_id": ids[1]}
    for name in _STATE_FIELDS:
        if name in billing:
            values[name] = int(billing[name]) if name in _INT_FIELDS else billing[name]
    return BillingState(**values)


class BillingStore:
    def __init__(self, redis: aioredis.Redis, sealer: AccountSealer | None = None):
        """``sealer``: key material, to open and seal the Stripe ids and name their index; without
        it only the status fields are read (``state`` gives the ids as "")."""
        self._redis = redis
        self._sealer = sealer
        self._set_customer = redis.register_script(_SET_CUSTOMER)
        self._reseal = redis.register_script(_RESEAL)

    def __repr__(self) -> str:
        return "BillingStore()"

    def _need_sealer(self) -> AccountSealer:
        if self._sealer is None:
            raise RuntimeError("the Stripe ids are sealed at rest: this needs key material (ask the verifier pool)")
        return self._sealer

    def _open(self, sealed: str | None, plaintext: str | None) -> str:
        """A sealed id opened (raises SealError), else the pre-sealing plaintext, else ""."""
        if sealed:
            return self._need_sealer().open(sealed)
        return plaintext or ""

    def _ids(self, stored: dict[str, str | None]) -> tuple[str, str]:
        return (self._open(stored.get(CUSTOMER_SEALED), stored.get(LEGACY_CUSTOMER)),
                self._open(stored.get(SUBSCRIPTION_SEALED), stored.get(LEGACY_SUBSCRIPTION)))

    async def _read_ids(self, key: str) -> dict[str, str | None]:
        return dict(zip(ID_FIELDS, await self._redis.hmget(key, list(ID_FIELDS)), strict=True))

    async def customer_id(self, account_id: str) -> str:
        """The account's Stripe customer id; "" when it has none yet (moved to the current seal
        and index name if it was behind)."""
        self._need_sealer()
        stored = await self._read_ids(account_key(account_id))
        customer, subscription = self._ids(stored)
        await self._reseal_ids(account_id, account_key(account_id), stored, customer, subscription)
        return customer

    async def set_customer(self, account_id: str, customer_id: str) -> None:
        """Record the account's Stripe customer (raises AccountError for an unknown account, so
        no half account hash is ever made)."""
        if not customer_id:
            raise ValueError("a customer id is required")
        sealer = self._need_sealer()
        done = await self._set_customer(
            keys=[account_key(account_id), sealer.customer_index_key(customer_id), ACCOUNTS_KEY],
            args=[sealer.seal(customer_id), account_id, CUSTOMER_INDEX_PREFIX])
        if not done:
            raise AccountError("no such account")

    async def account_for_customer(self, customer_id: str) -> str | None:
        """The account of a Stripe customer (an index found under an older name is moved)."""
        if not customer_id:
            return None
        names = self._need_sealer().customer_index_candidates(customer_id)
        found = next(((name, account_id) for name, account_id in zip(names, await self._redis.mget(names),
                                                                     strict=True) if account_id), None)
        if found is None:
            return None
        if found[0] != names[0]:
            await self.reseal(found[1])
        return found[1]

    async def accounts(self) -> list[str]:
        """Every account with a customer or a subscription status (in no particular order)."""
        return sorted(await self._redis.smembers(ACCOUNTS_KEY))

    async def state(self, account_id: str) -> BillingState:
        """The account's billing state; its ids opened only by a store with key material."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(account_key(account_id), list(ID_FIELDS))
            pipe.hgetall(billing_key(account_id))
            stored, billing = await pipe.execute()
        ids = self._ids(dict(zip(ID_FIELDS, stored, strict=True))) if self._sealer is not None else ("", "")
        return _state_from(ids, billing)

    async def update_once(self, event_id: str, account_id: str,
                          decide: Callable[[BillingState], BillingState | None],
                          ) -> tuple[BillingState, BillingState] | None:
        """Apply Stripe event ``event_id`` to the account exactly once: ``decide`` gets the
        current state and returns the new one (None: no change). The new state and the event
        mark are written together; an event already marked changes nothing. Returns (before,
        after) when something changed, else None. Needs key material (the ids are sealed)."""
        sealer = self._need_sealer()
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
                    stored = dict(zip(ID_FIELDS, await pipe.hmget(account_key(account_id), list(ID_FIELDS)),
                                      strict=True))
                    before = _state_from(self._ids(stored), await pipe.hgetall(billing_key(account_id)))
                    after = decide(before)
                    if after is not None:
                        # The customer id is never changed here (set_customer owns it and its index).
                        after = replace(after, customer_id=before.customer_id)
                    pipe.multi()
                    if after is not None and after != before:
                        if after.subscription_id != before.subscription_id or stored[LEGACY_SUBSCRIPTION]:
                            pipe.hset(account_key(account_id), SUBSCRIPTION_SEALED,
                                      sealer.seal(after.subscription_id) if after.subscription_id else "")
                            pipe.hdel(account_key(account_id), LEGACY_SUBSCRIPTION)
                        pipe.hset(billing_key(account_id),
                                  mapping={name: getattr(after, name) for name in _STATE_FIELDS})
                        pipe.sadd(ACCOUNTS_KEY, account_id)
                    pipe.set(mark, account_id, ex=EVENT_TTL_S)
                    await pipe.execute()
                    return (before, after) if after is not None and after != before else None
                except WatchError:
                    continue  # another writer got in between: read again

    async def reseal(self, account_id: str) -> Resealed:
        """Move the account's Stripe ids to the current envelope key and its customer index to
        the current pepper (a rotation's migration; a record from before sealing too)."""
        key = account_key(account_id)
        stored = await self._read_ids(key)
        try:
            customer, subscription = self._ids(stored)
        except SealError:
            return Resealed.UNREADABLE
        return await self._reseal_ids(account_id, key, stored, customer, subscription)

    async def reseal_retained(self, account_id: str) -> Resealed:
        """The same for a purged account's retained billing record (``neuroapi:billing:<id>``,
        which keeps the sealed ids and no index)."""
        key = billing_key(account_id)
        stored = await self._read_ids(key)
        try:
            customer, subscription = self._ids(stored)
        except SealError:
            return Resealed.UNREADABLE
        return await self._reseal_ids(account_id, key, stored, customer, subscription, indexed=False)

    async def _reseal_ids(self, account_id: str, key: str, stored: dict[str, str | None], customer: str,
                          subscription: str, indexed: bool = True) -> Resealed:
        sealer = self._need_sealer()

        def behind(sealed: str | None, plaintext: str | None) -> bool:
            # Only ever forward: a process whose material is behind a record's leaves it alone.
            return bool(plaintext and not sealed) or (bool(sealed) and (sealed_version(sealed) or 0)
                                                      < sealer.envelope_version)

        reseal_customer = behind(stored[CUSTOMER_SEALED], stored[LEGACY_CUSTOMER])
        reseal_subscription = behind(stored[SUBSCRIPTION_SEALED], stored[LEGACY_SUBSCRIPTION])
        index = customer_index_of(stored) or "" if indexed and customer else ""
        move_index = indexed and bool(customer) and (index_version(index) or 0) < sealer.pepper_version
        if not (reseal_customer or reseal_subscription or move_index):
            return Resealed.CURRENT
        wanted = sealer.customer_index_key(customer) if move_index else index
        done = await self._reseal(
            keys=[key, index or wanted or key, wanted or key],
            args=[account_id, "1" if indexed and customer else "0",
                  stored[CUSTOMER_SEALED] or "", stored[LEGACY_CUSTOMER] or "",
                  stored[SUBSCRIPTION_SEALED] or "", stored[LEGACY_SUBSCRIPTION] or "",
                  sealer.seal(customer) if reseal_customer and customer else "",
                  sealer.seal(subscription) if reseal_subscription and subscription else ""])
        return Resealed.MOVED if done == 1 else Resealed.CONFLICT
