"""Account deletion against a real redis-server: deleting ends keys and sessions at once (every
cache holder confirmed first), the purge batch leaves only the documented accounting records,
both are idempotent, and deleting one account never touches another's data."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.accounts import store as store_module
from actors.accounts.deletion import PURGE_QUEUE, delete_account, purge_due
from actors.accounts.passwords import hash_password
from actors.accounts.sealing import AccountSealer
from actors.accounts.service import AccountService
from actors.accounts.sessions import SessionStore, SessionTokens
from actors.billing.store import ACCOUNTS_KEY, BillingStore
from actors.keys.crypto import KeyCrypto
from actors.keys.store import KeyStore
from actors.metering.record import CallRecord
from actors.metering.usage_store import CALLS_STREAM, UsageStore
from actors.routing.scopes import ScopeStore
from core.audit import AUDIT_STREAM
from core.invalidation import HOLDERS
from core.scope import Scope
from finetunes.registry import FineTune, FineTuneRegistry
from tests.support.key_material import account_store, material
from tests.support.listeners import listening

PASSWORD = "a long enough password"
MARCH, APRIL = 1_773_532_800_000, 1_776_211_200_000  # 2026-03-15 and 2026-04-15 UTC (ms)
# Keys every account shares: compared entry by entry, not as wholes.
SHARED = {CALLS_STREAM, AUDIT_STREAM, ACCOUNTS_KEY, PURGE_QUEUE, HOLDERS}


@pytest.fixture
def key_material():
    return material()


async def populate(redis, key_material, email: str, customer: str) -> SimpleNamespace:
    """An account with everything: keys (one revoked), sessions, usage in two months and their
    calls, a scope change (audited), a Stripe customer and subscription, an owned fine-tune."""
    account = await account_store(redis, key_material).create(email, hash_password(PASSWORD, 4))
    keys = KeyStore(redis, KeyCrypto(key_material))
    live, live_info = await keys.create(account.id, "live")
    dead, dead_info = await keys.create(account.id, "dead")
    await keys.revoke(dead_info.prefix)
    tokens = SessionTokens(key_material.peppers)
    sessions = [tokens.mint(account.id, 600)[1] for _ in range(2)]
    for session in sessions:
        await SessionStore(redis).open(session)
    await UsageStore(redis).write([
        CallRecord(secrets.token_hex(8), at, live_info.prefix, account.id, 200, "fast", "p", "m",
                   10, 5, False, 1500, 100, 200)
        for at in (MARCH, APRIL)])
    await ScopeStore(redis).set(account.id, Scope(True, frozenset()), actor="operator")
    billing = BillingStore(redis, AccountSealer(key_material))
    await billing.set_customer(account.id, customer)
    await billing.update_once(f"evt_{customer}", account.id, lambda state: replace(
        state, subscription_id=f"sub_{customer}", status="active", status_at=1, billed_from_month="2026-03"))
    registry = FineTuneRegistry(redis)
    name = "ft-" + account.id.replace("_", "-")
    version = await registry.next_version(name)
    await registry.add(FineTune(name, version, "base", "d" * 64, "/ft", account.id, "staged", "operator", 1, 8))
    return SimpleNamespace(id=account.id, email=account.email, customer=customer, keys=[live, dead],
                           prefixes=[live_info.prefix, dead_info.prefix], sessions=sessions, finetune=name)


async def dump(redis) -> dict:
    """Every key with its value (streams as {entry id: fields}), hash fields and all."""
    out = {}
    async for key in redis.scan_iter("*"):
        kind = await redis.type(key)
        if kind == "string":
            out[key] = await redis.get(key)
        elif kind == "hash":
            out[key] = await redis.hgetall(key)
        elif kind == "set":
            out[key] = await redis.smembers(key)
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[key] = await redis.lrange(key, 0, -1)
        elif kind == "stream":
            out[key] = dict(await redis.xrange(key))
        else:
            raise AssertionError(f"{key} is a {kind}: teach dump() about it")
    return out


def mentions(key: str, value, needles: list[str]) -> bool:
    text = key + repr(value)
    return any(needle in text for needle in needles)


def needles_of(account) -> list[str]:
    """What identifies the account (its id excepted: accounting records keep that)."""
    return [account.email, hashlib.sha256(account.email.encode()).hexdigest(), *account.prefixes]


async def test_deletion_ends_keys_and_sessions_at_once_on_every_replica(own_redis, redis, key_material):
    account = await populate(redis, key_material, "gone@example.com", "cus_gone")
    other = await populate(redis, key_material, "stays@example.com", "cus_stays")
    heard: list[list[tuple[str, str]]] = [[], []]
    async with listening(own_redis.url, *(lambda t, s, i=i: heard[i].append((t, s)) for i in range(2))):
        assert await delete_account(redis, account.id)
        # Both replicas dropped the live key and the account before delete_account returned.
        assert heard == [[("key", account.prefixes[0]), ("account", account.id)]] * 2
    keys, sessions = KeyStore(redis, KeyCrypto(key_material)), SessionStore(redis)
    assert [await keys.verify(key) for key in account.keys] == [None, None]
    assert [await sessions.is_open(s) for s in account.sessions] == [False, False]
    service = AccountService(redis, lambda: key_material, password_rounds=4)
    assert await service.login(account.email, PASSWORD) is None
    assert (await account_store(redis, key_material).get(account.id)).status == "deleted"
    assert await redis.zscore(PURGE_QUEUE, account.id) <= time.time()
    # The other account still works.
    assert (await keys.verify(other.keys[0])).account_id == other.id
    assert [await sessions.is_open(s) for s in other.sessions] == [True, True]
    assert await service.login(other.email, PASSWORD) is not None


async def test_purge_leaves_only_the_accounting_records(redis, key_material):
    account = await populate(redis, key_material, "gone@example.com", "cus_gone")
    other = await populate(redis, key_material, "stays@example.com", "cus_stays")
    # A call record naming only the key (no account id) goes too.
    await UsageStore(redis).write([CallRecord("orphan", APRIL, account.prefixes[0], "", 401, "", "", "",
                                              0, 0, False, 0, 10, 10)])
    assert await delete_account(redis, account.id)
    assert await purge_due(redis) == [account.id]
    after = await dump(redis)

    assert [k for k, v in after.items() if mentions(k, v, needles_of(account))] == []
    assert not [k for k in after if k.startswith("neuroapi:session:") and after[k] == account.id]
    assert [f for f in after[CALLS_STREAM].values() if account.id in repr(f)] == []
    remaining = sorted(k for k, v in after.items() if k not in SHARED and mentions(k, v, [account.id]))
    assert remaining == sorted([
        f"neuroapi:account:{account.id}:usage:2026-03",
        f"neuroapi:account:{account.id}:usage:2026-04",
        f"neuroapi:billing:{account.id}",
        "neuroapi:billing-event:evt_cus_gone",
        f"neuroapi:ft:{account.finetune}:v1",
    ])
    assert int(after[f"neuroapi:account:{account.id}:usage:2026-04"]["cost_micro_units"]) == 1500
    detached = after[f"neuroapi:billing:{account.id}"]
    sealer = AccountSealer(key_material)  # kept sealed, as in the account hash
    assert "stripe_customer_id" not in detached and "stripe_subscription_id" not in detached
    assert (sealer.open(detached["stripe_customer_sealed"]), sealer.open(detached["stripe_subscription_sealed"]),
            detached["status"]) == ("cus_gone", "sub_cus_gone", "active")
    assert int(detached["deleted_at"]) > 0
    assert after[f"neuroapi:ft:{account.finetune}:v1"]["owner_account"] == account.id  # not opened to all
    assert account.id not in after[ACCOUNTS_KEY]
    assert await BillingStore(redis, sealer).account_for_customer("cus_gone") is None
    audited = [f for f in after[AUDIT_STREAM].values() if f.get("account_id") == account.id]
    assert [f["action"] for f in audited] == ["scope.set", "account.delete", "account.purge"]
    # The email is free again, and nothing of the account can come back.
    assert await account_store(redis, key_material).by_email(account.email) is None
    await account_store(redis, key_material).create(account.email)
    with pytest.raises(LookupError):
        await KeyStore(redis, KeyCrypto(key_material)).create(account.id)
    assert other.id in after[ACCOUNTS_KEY]
    assert (await account_store(redis, key_material).by_email(other.email)).id == other.id


async def test_a_second_delete_or_purge_changes_nothing(redis, key_material):
    account = await populate(redis, key_material, "gone@example.com", "cus_gone")
    assert await delete_account(redis, account.id)
    deleted = await dump(redis)
    assert not await delete_account(redis, account.id)
    assert await dump(redis) == deleted
    assert await purge_due(redis) == [account.id]
    purged = await dump(redis)
    assert await purge_due(redis) == []
    assert not await delete_account(redis, account.id)
    assert await dump(redis) == purged
    assert not await delete_account(redis, "acct_never_was")
    assert await dump(redis) == purged


async def test_the_purge_waits_for_its_due_time(redis, key_material):
    account = await populate(redis, key_material, "later@example.com", "cus_later")
    assert await delete_account(redis, account.id, purge_after_s=3600)
    assert await purge_due(redis) == []
    assert await redis.exists(f"neuroapi:account:{account.id}")
    assert await purge_due(redis, now=time.time() + 3601) == [account.id]
    assert not await redis.exists(f"neuroapi:account:{account.id}")


# ---- deleting one account never touches another ------------------------------------------------

def look_alike_accounts():
    """2 to 4 accounts whose emails, ids and customer ids are prefixes of one another."""
    local = st.text("a.", min_size=1, max_size=3).filter(lambda s: s != "." * len(s))
    email = st.tuples(local, st.sampled_from(["x.io", "x.io.uk", "xx.io"])).map("@".join)
    return st.tuples(
        st.lists(email, min_size=2, max_size=4, unique=True),
        st.lists(st.text("0a", min_size=1, max_size=3), min_size=4, max_size=4, unique=True),
        st.integers(0, 3),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=look_alike_accounts())
def test_deleting_one_account_never_changes_another(own_redis, key_material, drawn):
    emails, ids, chosen = drawn
    asyncio.run(delete_one_of(own_redis.url, key_material, emails, ids, chosen % len(emails)))


async def delete_one_of(url: str, key_material, emails: list[str], ids: list[str], target: int) -> None:
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await redis.flushdb()
        drawn_ids = iter(ids)
        fake = SimpleNamespace(token_hex=lambda _n: next(drawn_ids))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store_module, "secrets", fake)  # ids acct_0, acct_00, acct_0a, ...
            accounts = [await populate(redis, key_material, email, "cus_" + "a" * (i + 1))
                        for i, email in enumerate(emails)]
        gone = accounts[target]
        before = await dump(redis)
        assert await delete_account(redis, gone.id)
        assert await purge_due(redis) == [gone.id]
        after = await dump(redis)
        theirs = [gone.id, *needles_of(gone), gone.customer, gone.finetune]

        def own(key: str, value) -> bool:
            # The target's keys: a part of the name is exactly one of its names, or the value is its id.
            return any(n in key.split(":") for n in theirs) or value == gone.id

        for key, value in before.items():
            if key in SHARED or own(key, value):
                continue
            assert after.get(key) == value, key
        kept = {i: f for i, f in before[CALLS_STREAM].items() if f["account_id"] != gone.id}
        assert after[CALLS_STREAM] == kept
        assert after[ACCOUNTS_KEY] == before[ACCOUNTS_KEY] - {gone.id}
        assert {i: f for i, f in after[AUDIT_STREAM].items() if i in before[AUDIT_STREAM]} == before[AUDIT_STREAM]
        for other in accounts:
            if other is not gone:
                assert (await account_store(redis, key_material).by_email(other.email)).id == other.id
    finally:
        await redis.aclose()
