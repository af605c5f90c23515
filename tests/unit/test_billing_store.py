"""BillingStore in a real redis-server: the customer link and its index, the state read back,
and update_once writing a change and its event mark together, once."""

from __future__ import annotations

from dataclasses import replace

import pytest
from redis.asyncio.client import Pipeline

from actors.accounts.store import AccountError, account_key
from actors.billing.store import (
    ACCOUNTS_KEY,
    EVENT_TTL_S,
    BillingState,
    BillingStore,
    billing_key,
    event_key,
)
from tests.support.key_material import account_store


async def _account(redis, email="billing@example.com") -> str:
    return (await account_store(redis).create(email)).id


async def test_customer_is_stored_on_the_account_and_indexed(redis):
    store = BillingStore(redis)
    account_id = await _account(redis)
    assert await store.customer_id(account_id) == ""
    assert await store.account_for_customer("cus_A") is None

    await store.set_customer(account_id, "cus_A")
    assert await store.customer_id(account_id) == "cus_A"
    assert await redis.hget(account_key(account_id), "stripe_customer_id") == "cus_A"
    assert await store.account_for_customer("cus_A") == account_id
    assert await store.accounts() == [account_id]
    # The rest of the account hash is untouched.
    assert (await account_store(redis).get(account_id)).email == "billing@example.com"


async def test_a_replaced_customer_no_longer_finds_the_account(redis):
    store = BillingStore(redis)
    account_id = await _account(redis)
    await store.set_customer(account_id, "cus_old")
    await store.set_customer(account_id, "cus_new")
    assert await store.account_for_customer("cus_old") is None
    assert await store.account_for_customer("cus_new") == account_id


async def test_an_unknown_account_gets_no_customer_and_no_half_account(redis):
    store = BillingStore(redis)
    with pytest.raises(AccountError):
        await store.set_customer("acct_missing", "cus_X")
    assert not await redis.exists(account_key("acct_missing"))
    assert await store.account_for_customer("cus_X") is None
    with pytest.raises(ValueError):
        await store.set_customer(await _account(redis), "")


async def test_state_of_an_account_without_billing_is_none(redis):
    account_id = await _account(redis)
    state = await BillingStore(redis).state(account_id)
    assert state == BillingState()
    assert state.status == "none" and not state.subscribed


async def test_update_once_writes_state_and_mark_together_and_only_once(redis):
    store = BillingStore(redis)
    account_id = await _account(redis)
    await store.set_customer(account_id, "cus_A")
    new = BillingState(subscription_id="sub_1", status="active", status_at=100, status_since=100,
                       period_start=100, period_end=200, billed_from_micro=5, billed_from_month="2026-03")

    changed = await store.update_once("evt_1", account_id, lambda state: replace(new, customer_id="cus_forged"))
    assert changed == (BillingState(customer_id="cus_A"), replace(new, customer_id="cus_A"))
    state = await store.state(account_id)
    assert state == replace(new, customer_id="cus_A")  # the customer id is set_customer's alone
    assert state.unbilled_micro("2026-03") == 5 and state.unbilled_micro("2026-04") == 0
    assert await redis.hget(account_key(account_id), "stripe_subscription_id") == "sub_1"
    assert await redis.hget(billing_key(account_id), "status") == "active"
    assert 0 < await redis.ttl(event_key("evt_1")) <= EVENT_TTL_S

    calls = []
    again = await store.update_once("evt_1", account_id,
                                    lambda state: calls.append(state) or replace(state, status="canceled"))
    assert again is None and calls == []  # a marked event is not even decided again
    assert (await store.state(account_id)).status == "active"


async def test_an_event_that_changes_nothing_is_still_marked(redis):
    store = BillingStore(redis)
    account_id = await _account(redis)
    assert await store.update_once("evt_noop", account_id, lambda state: None) is None
    assert await redis.exists(event_key("evt_noop"))
    assert not await redis.exists(billing_key(account_id))
    assert not await redis.sismember(ACCOUNTS_KEY, account_id)


async def test_update_once_for_a_missing_account_writes_nothing(redis):
    store = BillingStore(redis)
    with pytest.raises(AccountError):
        await store.update_once("evt_x", "acct_missing", lambda state: replace(state, status="active"))
    assert not await redis.exists(account_key("acct_missing"))
    assert not await redis.exists(event_key("evt_x"))


async def test_a_write_between_read_and_exec_makes_update_once_decide_again(redis, monkeypatch):
    """WATCH: a state another writer changed after this one read it is read and decided again,
    never overwritten with a decision made on the stale read."""
    store = BillingStore(redis)
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
