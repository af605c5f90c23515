"""Deleting an account: at once, everything that lets it act ends; in the next purge batch,
everything that identifies it goes, except the accounting records.

``delete_account`` (self-service, or an operator), all before it returns:

- the account hash gets ``status`` "deleted" and ``deleted_at``: log-in, sessions and key checks
  all require "active", so from here on nothing of the account is accepted from Redis;
- every active key is revoked through ``KeyStore.revoke``, which waits until every replica that
  caches verified keys has dropped it (no grace period), then one ``account`` broadcast drops
  anything else a replica cached for the account (a key minted while this ran);
- every session is ended: its record and the per-account index
  (``actors.accounts.sessions.account_sessions_key``, kept by ``SessionStore.open``/``close``);
- the account is queued for purge: ``neuroapi:purge-queue`` (sorted set, member = account id,
  score = the unix time it is due, by default at once: the next housekeeping pass).

Until the purge the email stays taken (its index still names the account).

``purge_due`` (the housekeeping pass; ``neuroapi purge``), per due account, deletes:

- ``neuroapi:account:<id>`` (sealed email, password hash, status, scope fields, sealed Stripe
  ids) and the email index, by the name the hash keeps (``email_index``; for a record from
  before sealing, the SHA-256 name of its plaintext email), so the purge needs no key material;
- every key record ``neuroapi:key:<prefix>`` and the set ``neuroapi:account:<id>:keys``;
- the sessions (again: one opened while the deletion ran) and their index;
- the customer index ``neuroapi:billing-by-customer:v<P>:<hmac>``, by the name the hash keeps
  (``stripe_customer_index``; before sealing, ``neuroapi:billing-by-customer:<customer>``), and
  the id in ``neuroapi:billing-accounts`` (the usage reporter has no customer left to report to);
- every entry of the calls stream ``neuroapi:calls`` with its account id or one of its key prefixes.

What stays, and why (accounting: invoices and tax records must be reproducible for years;
``actors.metering.retention`` ages these out on the accounting window, not here). Each holds
ids and numbers only, never the email, a key prefix or a secret:

- ``neuroapi:account:<id>:usage:<YYYY-MM>``: the monthly counters (requests, cost, tokens, bytes);
- ``neuroapi:billing:<id>`` (only for an account that had a Stripe customer or billing state):
  the subscription status and period, plus ``stripe_customer_sealed`` and
  ``stripe_subscription_sealed`` (moved here from the account hash, still sealed: opening them
  needs key material, and ``neuroapi secrets rotate-envelope`` reseals them) and ``deleted_at``,
  so a Stripe invoice can still be matched to the counters. (An account whose ids were never
  sealed moves them here as they are; the rotation migration seals them.) The Stripe customer
  itself is kept for its invoices: nothing here calls Stripe (nor cancels a subscription);
- ``neuroapi:billing:usage_report:<id>[:<YYYY-MM>]``: what was reported to Stripe per month;
- ``neuroapi:billing-event:<event>`` marks (value: the account id), which expire on their own;
- the audit stream ``neuroapi:audit``: its entries name the account by id only (scope changes:
  operator, before/after), plus the ``account.delete`` and ``account.purge`` entries written
  here: who changed what stays accountable;
- fine-tunes it owns keep ``owner_account`` = the id: clearing it would open them to every
  account, and with its keys revoked nobody can call them. Their files are not touched here.

Both calls are idempotent: a second ``delete_account`` returns False and changes nothing (a
deletion that crashed half way is finished by the next call, which still returns False); a
second ``purge_due`` finds nothing due."""

from __future__ import annotations

import time
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from actors.accounts.sessions import SessionStore, account_sessions_key
from actors.accounts.store import account_key, account_prefixes_key, email_index_of
from actors.billing.store import (ACCOUNTS_KEY, CUSTOMER_SEALED, LEGACY_CUSTOMER, LEGACY_SUBSCRIPTION,
                                  SUBSCRIPTION_SEALED, billing_key, customer_index_of)
from actors.keys.crypto import KeyCrypto
from actors.keys.store import KeyStore, key_record_key
from actors.metering.usage_store import CALLS_STREAM
from actors.routing.scopes import ACCOUNT_TOPIC
from core.audit import audit
from core.invalidation import broadcast

PURGE_QUEUE = "neuroapi:purge-queue"
DELETED = "deleted"
CALLS_PAGE = 1000  # stream entries read per round trip while purging

# Mark and queue in one step, so of two concurrent deletions exactly one returns True.
_MARK = """
-- KEYS[1] account hash  KEYS[2] purge queue  ARGV: account id, now, due
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'deleted' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'deleted', 'deleted_at', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""


def _key_store(redis: aioredis.Redis) -> KeyStore:
    # Revoking touches no key material: a store without crypto revokes like any other.
    return KeyStore(redis, cast(KeyCrypto, None))


async def delete_account(redis: aioredis.Redis, account_id: str, *, actor: str = "self",
                         purge_after_s: float = 0.0) -> bool:
    """Delete now (see the module docstring); False when the account is unknown or already
    deleted. When this returns, no replica accepts its keys or sessions."""
    now = int(time.time())
    marked = bool(await redis.eval(_MARK, 2, account_key(account_id), PURGE_QUEUE,
                                   account_id, now, now + purge_after_s))
    if marked:
        await audit(redis, actor, "account.delete", account_id=account_id)
    elif await redis.hget(account_key(account_id), "status") != DELETED:
        return False  # unknown, or purged already
    # Also on a repeated call: it finishes a deletion cut short (a replica that did not confirm).
    keys = _key_store(redis)
    revoked = 0
    for info in await keys.list(account_id):
        if info.status == "active":
            try:
                await keys.revoke(info.prefix)
                revoked += 1
            except LookupError:
                continue  # purged meanwhile
    await SessionStore(redis).close_all(account_id)
    if marked or revoked:
        await broadcast(redis, ACCOUNT_TOPIC, account_id)
    return marked


async def purge_due(redis: aioredis.Redis, now: float | None = None) -> list[str]:
    """Purge every deleted account whose time has come; returns their ids. A purge cut short
    leaves the account queued, and the next batch does it again (every step is a deletion)."""
    now = time.time() if now is None else now
    purged = []
    for account_id in await redis.zrangebyscore(PURGE_QUEUE, "-inf", now):
        await _purge(redis, account_id)
        purged.append(account_id)
    return purged


async def _purge(redis: aioredis.Redis, account_id: str) -> None:
    prefixes = set(await redis.smembers(account_prefixes_key(account_id)))
    await _forget_calls(redis, account_id, prefixes)
    await SessionStore(redis).close_all(account_id)
    account, prefix_set = account_key(account_id), account_prefixes_key(account_id)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                # A key minted meanwhile (its prefix added) makes this read again.
                await pipe.watch(account, prefix_set)
                fields = await pipe.hgetall(account)
                prefixes = set(await pipe.smembers(prefix_set))
                index = email_index_of(fields)
                owns_index = index is not None and await pipe.get(index) == account_id
                customer_index = customer_index_of(fields)
                owns_customer = customer_index is not None and await pipe.get(customer_index) == account_id
                # The ids as they are (sealed; plaintext only if they never were): no key material here.
                ids = {name: fields[name] for name in (CUSTOMER_SEALED, SUBSCRIPTION_SEALED, LEGACY_CUSTOMER,
                                                       LEGACY_SUBSCRIPTION) if fields.get(name)}
                billed = customer_index is not None or bool(await pipe.exists(billing_key(account_id)))
                pipe.multi()
                if fields and billed:
                    pipe.hset(billing_key(account_id), mapping={**ids, "deleted_at": fields.get("deleted_at", "")})
                if owns_index:
                    pipe.delete(index)
                if owns_customer:
                    pipe.delete(customer_index)
                for prefix in prefixes:
                    pipe.delete(key_record_key(prefix))
                pipe.delete(prefix_set, account, account_sessions_key(account_id))
                pipe.srem(ACCOUNTS_KEY, account_id)
                pipe.zrem(PURGE_QUEUE, account_id)
                await pipe.execute()
                break
            except WatchError:
                continue
    await audit(redis, "housekeeping", "account.purge", account_id=account_id)


async def _forget_calls(redis: aioredis.Redis, account_id: str, prefixes: set[str]) -> None:
    """XDEL every calls-stream entry naming the account or one of its keys."""
    start = "-"
    while True:
        page = await redis.xrange(CALLS_STREAM, min=start, max="+", count=CALLS_PAGE)
        if not page:
            return
        doomed = [entry_id for entry_id, fields in page
                  if fields.get("account_id") == account_id or fields.get("key_prefix") in prefixes]
        if doomed:
            await redis.xdel(CALLS_STREAM, *doomed)
        if len(page) < CALLS_PAGE:
            return
        start = "(" + page[-1][0]
