"""BillingStore in a real redis-server: the customer link and its index, the state read back,
and update_once writing a change and its event mark together, once. The Stripe ids are sealed
at rest and their index keyed (``actors.accounts.sealing``): ids from before sealing are read
and moved on the next touch and by the rotation's ``reseal``."""

from __future__ import annotations

from dataclasses import replace

import pytest
from redis.asyncio.client import Pipeline

from actors.accounts.sealing import AccountSealer, legacy_customer_index_key
from actors.accounts.store import AccountError, Resealed, account_key
from actors.billing.store import (
    ACCOUNTS_KEY,
    EVENT_TTL_S,
    BillingState,
    BillingStore,
    billing_key,
    customer_index_of,
    event_key,
)
from tests.support.key_material import ACCOUNTS_MATERIAL, account_store, material

SEALER = AccountSealer(ACCOUNTS_MATERIAL)


async def _account(redis, email="billing@example.com") -> str:
    return (await account_store(redis).create(email)).id


async def test_customer_is_stored_on_the_account_and_indexed(redis):
    store = BillingStore(redis, SEALER)
    account_id = await _account(redis)
    assert await store.customer_id(account_id) == ""
    assert await store.account_for_customer("cus_A") is None

    await store.set_customer(account_id, "cus_A")
    assert await store.customer_id(account_id) == "cus_A"
    stored = await redis.hgetall(account_key(account_id))
    assert "stripe_customer_id" not in stored and "cus_A" not in str(stored)  # sealed at rest
    assert SEALER.open(stored["stripe_customer_sealed"]) == "cus_A"
    assert stored["stripe_customer_index"] == SEALER.customer_index_key("cus_A") == customer_index_of(stored)
    assert await redis.get(stored["stripe_customer_index"]) == account_id
    assert not await redis.exists(legacy_customer_index_key("cus_A"))
    assert await store.account_for_customer("cus_A") == account_id
    assert await store.accounts() == [account_id]
    # The rest of the account hash is untouched.
    assert (await account_store(redis).get(account_id)).email == "billing@example.com"


async def test_a_replaced_customer_no_longer_finds_the_account(redis):
    store = BillingStore(redis, SEALER)
    account_id = await _account(redis)
    await store.set_customer(account_id, "cus_old")
    await store.set_customer(account_id, "cus_new")
    assert await store.account_for_customer("cus_old") is None
    assert await store.account_for_customer("cus_new") == account_id


async def test_an_unknown_account_gets_no_customer_and_no_half_account(redis):
    store = BillingStore(redis, SEALER)
    with pytest.raises(AccountError):
        await store.set_customer("acct_missing", "cus_X")
    assert not await redis.exists(account_key("acct_missing"))
    assert await store.account_for_customer("cus_X") is None
    with pytest.raises(ValueError):
        await store.set_customer(await _account(redis), "")


async def test_state_of_an_account_without_billing_is_none(redis):
    account_id = await _account(redis)
    state = await BillingStore(redis, SEALER).state(account_id)
    assert state == BillingState()
    assert state.status == "none" and not state.subscribed


async def test_update_once_writes_state_and_mark_together_and_only_once(redis):
    store = BillingStore(redis, SEALER)
    account_id = await _account(redis)
    await store.set_customer(account_id, "cus_A")
    new = BillingState(subscription_id="sub_1", status="active", status_at=100, status_since=100,
                       period_start=100, period_end=200, billed_from_micro=5, billed_from_month="2026-03")

    changed = await store.update_once("evt_1", account_id, lambda state: replace(new, customer_id="cus_forged"))
    assert changed == (BillingState(customer_id="cus_A"), replace(new, customer_id="cus_A"))
    state = await store.state(account_id)
    assert state == replace(new, customer_id="cus_A")  # the customer id is set_customer's alone
    assert state.unbilled_micro("2026-03") == 5 and state.unbilled_micro("2026-04") == 0
    stored = await redis.hgetall(account_key(account_id))
    assert "stripe_subscription_id" not in stored and "sub_1" not in str(stored)  # sealed at rest
    assert SEALER.open(stored["stripe_subscription_sealed"]) == "sub_1"
    assert await redis.hget(billing_key(account_id), "status") == "active"
    assert 0 < await redis.ttl(event_key("evt_1")) <= EVENT_TTL_S

    calls = []
    again = await store.update_once("evt_1", account_id,
                                    lambda state: calls.append(state) or replace(state, status="canceled"))
    assert again is None and calls == []  # a marked event is not even decided again
    assert (await store.state(account_id)).status == "active"


async def test_an_event_that_changes_nothing_is_still_marked(redis):
    store = BillingStore(redis, SEALER)
    account_id = await _account(redis)
    assert await store.update_once("evt_noop", account_id, lambda state: None) is None
    assert await redis.exists(event_key("evt_noop"))
    assert not await redis.exists(billing_key(account_id))
    assert not await redis.sismember(ACCOUNTS_KEY, account_id)


async def test_update_once_for_a_missing_account_writes_nothing(redis):
    store = BillingStore(redis, SEALER)
    with pytest.raises(AccountError):
        await store.update_once("evt_x", "acct_missing", lambda state: replace(state, status="active"))
    assert not await redis.exists(account_key("acct_missing"))
    assert not await redis.exists(event_key("evt_x"))


async def test_a_write_between_read_and_exec_makes_update_once_decide_again(redis, monkeypatch):
    """WATCH: a state another writer changed after this one read it is read and decided again,
    never overwritten with a decision made on the stale read."""
    store = BillingStore(redis, SEALER)
    account_id = await _account(redis)
    real_execute = Pipeline.execute
    interfered = []

    async def execute(self, raise_on_error=True):
        if not interfered:  # the other writer, just before the first EXEC
            interfered.append(True)
            await redis.hset(billing_key(account_id), mapping={"status": "past_due", "status_at": 7})
        return await real_execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", execute)
    seen = []

    def decide(state):
        seen.append(state.status)
        return replace(state, status="active", status_at=state.status_at + 1)

    before, after = await store.update_once("evt_race", account_id, decide)
    assert seen == ["none", "past_due"]
    assert before.status == "past_due" and after.status_at == 8
    assert (await store.state(account_id)).status_at == 8


async def test_a_store_without_key_material_reads_the_status_but_never_an_id(redis):
    account_id = await _account(redis)
    await BillingStore(redis, SEALER).update_once("evt_1", account_id, lambda state: replace(
        state, subscription_id="sub_1", status="active", status_at=1))
    await BillingStore(redis, SEALER).set_customer(account_id, "cus_A")
    plain = BillingStore(redis)  # the ingress's gate and overview
    assert await plain.state(account_id) == BillingState(status="active", status_at=1)
    with pytest.raises(RuntimeError, match="key material") as raised:
        await plain.customer_id(account_id)
    with pytest.raises(RuntimeError):
        await plain.account_for_customer("cus_A")
    with pytest.raises(RuntimeError):
        await plain.set_customer(account_id, "cus_B")
    assert "cus_" not in str(raised.value) and repr(plain) == "BillingStore()"


async def _legacy(redis, customer="cus_old1", subscription="sub_old1") -> str:
    """An account whose Stripe ids were written before sealing: plaintext fields and index."""
    account_id = await _account(redis, f"{customer}@example.com")
    await redis.hset(account_key(account_id), mapping={"stripe_customer_id": customer,
                                                       "stripe_subscription_id": subscription})
    await redis.set(legacy_customer_index_key(customer), account_id)
    await redis.sadd(ACCOUNTS_KEY, account_id)
    return account_id


async def _sealed_as(redis, account_id, sealer, customer, subscription) -> None:
    stored = await redis.hgetall(account_key(account_id))
    assert "stripe_customer_id" not in stored and "stripe_subscription_id" not in stored
    assert customer not in str(stored) and subscription not in str(stored)
    assert sealer.open(stored["stripe_customer_sealed"]) == customer
    assert sealer.open(stored["stripe_subscription_sealed"]) == subscription
    assert stored["stripe_customer_index"] == sealer.customer_index_key(customer)
    assert await redis.get(stored["stripe_customer_index"]) == account_id
    assert not await redis.exists(legacy_customer_index_key(customer))


async def test_ids_from_before_sealing_are_read_then_moved_on_touch(redis):
    store = BillingStore(redis, SEALER)
    account_id = await _legacy(redis)
    assert (await store.state(account_id)).subscription_id == "sub_old1"  # a read moves nothing
    assert await redis.hget(account_key(account_id), "stripe_customer_id") == "cus_old1"
    assert await store.account_for_customer("cus_old1") == account_id  # found by its old name, moved
    await _sealed_as(redis, account_id, SEALER, "cus_old1", "sub_old1")
    assert await store.customer_id(account_id) == "cus_old1"
    assert await store.reseal(account_id) is Resealed.CURRENT

    other = await _legacy(redis, "cus_old2", "sub_old2")
    assert await store.customer_id(other) == "cus_old2"  # the other touch
    await _sealed_as(redis, other, SEALER, "cus_old2", "sub_old2")


async def test_a_webhook_on_a_record_from_before_sealing_seals_its_subscription(redis):
    store = BillingStore(redis, SEALER)
    account_id = await _legacy(redis, subscription="")
    changed = await store.update_once("evt_1", account_id, lambda state: replace(
        state, subscription_id="sub_new", status="active", status_at=1))
    assert changed[0].customer_id == "cus_old1" and changed[1].subscription_id == "sub_new"
    stored = await redis.hgetall(account_key(account_id))
    assert "stripe_subscription_id" not in stored and SEALER.open(stored["stripe_subscription_sealed"]) == "sub_new"


async def test_reseal_moves_ids_to_the_newest_envelope_key_and_pepper(redis):
    old = material()
    touched, migrated = await _account(redis, "a@example.com"), await _account(redis, "b@example.com")
    for account_id, customer in ((touched, "cus_A"), (migrated, "cus_B")):
        await BillingStore(redis, AccountSealer(old)).set_customer(account_id, customer)
        await BillingStore(redis, AccountSealer(old)).update_once(f"evt_{customer}", account_id, lambda state: replace(
            state, subscription_id="sub_" + customer, status="active", status_at=1))
    old_index = await redis.hget(account_key(migrated), "stripe_customer_index")
    newer = material(peppers=(1, 2), envelopes=(1, 2))
    newer.peppers[1], newer.envelope_keys[1] = old.peppers[1], old.envelope_keys[1]
    new_sealer = AccountSealer(newer)
    store = BillingStore(redis, new_sealer)
    assert await store.account_for_customer("cus_A") == touched  # found by its older name: moved on touch
    assert await store.reseal(touched) is Resealed.CURRENT
    assert await store.reseal(migrated) is Resealed.MOVED  # the rotation's migration
    assert await store.reseal(migrated) is Resealed.CURRENT
    for account_id, customer in ((touched, "cus_A"), (migrated, "cus_B")):
        stored = await redis.hgetall(account_key(account_id))
        assert stored["stripe_customer_sealed"].startswith("v2:")
        assert stored["stripe_subscription_sealed"].startswith("v2:")
        assert stored["stripe_customer_index"] == new_sealer.customer_index_key(customer, 2)
        assert await redis.get(stored["stripe_customer_index"]) == account_id
        assert (await store.state(account_id)).subscription_id == "sub_" + customer
    assert not await redis.exists(old_index)
    # A process still on the old material cannot open them, and says so without an id.
    with pytest.raises(ValueError) as raised:
        await BillingStore(redis, AccountSealer(old)).state(migrated)
    assert "cus_B" not in str(raised.value)
    assert await BillingStore(redis, AccountSealer(old)).reseal(migrated) is Resealed.UNREADABLE


async def test_reseal_is_a_compare_and_set(redis, monkeypatch):
    """A customer set between reseal's read and its write is never overwritten."""
    account_id = await _legacy(redis)
    store = BillingStore(redis, SEALER)
    real = store._read_ids

    async def read_then_interfere(key):
        stored = await real(key)
        await BillingStore(redis, SEALER).set_customer(account_id, "cus_new")
        return stored

    monkeypatch.setattr(store, "_read_ids", read_then_interfere)
    assert await store.reseal(account_id) is Resealed.CONFLICT
    assert await BillingStore(redis, SEALER).customer_id(account_id) == "cus_new"
    assert await BillingStore(redis, SEALER).account_for_customer("cus_new") == account_id
    assert not await redis.exists(legacy_customer_index_key("cus_old1"))  # set_customer moved it


async def test_set_customer_moves_the_index_off_a_pre_sealing_customer(redis):
    account_id = await _legacy(redis)
    store = BillingStore(redis, SEALER)
    await store.set_customer(account_id, "cus_B")
    assert not await redis.exists(legacy_customer_index_key("cus_old1"))
    assert await store.account_for_customer("cus_old1") is None
    assert await store.account_for_customer("cus_B") == account_id
    assert "stripe_customer_id" not in await redis.hgetall(account_key(account_id))
