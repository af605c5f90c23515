"""The ingress's billing gate (serve_app/callers/billing_gate.py): decisions from memory, read
again after an invalidation, an allowance that counts this replica's calls between reads."""

from __future__ import annotations

import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from actors.accounts.store import account_usage_key
from actors.billing.store import BillingState
from actors.metering.record import current_month
from actors.metering.usage_store import UsageStore
from core.errors import GatewayError
from serve_app.callers.billing_gate import BillingGate
from tests.support.key_material import account_store

FREE = 10_000_000  # 10 cost_units


class Store:
    """The billing state as Redis would give it, counting reads."""

    def __init__(self):
        self.states: dict[str, BillingState] = {}
        self.reads = 0

    async def state(self, account_id: str) -> BillingState:
        self.reads += 1
        return self.states.get(account_id, BillingState())


@pytest.fixture
async def account(redis) -> str:
    return (await account_store(redis).create("gate@example.com")).id


def gate(redis, store, refresh_s: float = 60.0) -> BillingGate:
    return BillingGate(store, UsageStore(redis), FREE, grace_s=3600, refresh_s=refresh_s)


async def use(redis, account_id: str, micro: int) -> None:
    await redis.hincrby(account_usage_key(account_id, current_month(int(time.time() * 1000))),
                        "cost_micro_units", micro)


async def test_a_decision_is_served_from_memory_until_it_is_invalidated(redis, account):
    store = Store()
    checks = gate(redis, store)
    for _ in range(5):
        await checks.check(account)
    assert store.reads == 1
    store.states[account] = BillingState(status="canceled")
    await use(redis, account, FREE)
    await checks.check(account)  # still the remembered decision: nothing told this replica
    checks.invalidate(account)
    with pytest.raises(GatewayError) as refused:
        await checks.check(account)
    assert (refused.value.status, refused.value.code) == (402, "payment_required")


async def test_this_replicas_calls_count_against_the_allowance_before_the_next_read(redis, account):
    store = Store()
    checks = gate(redis, store)
    await checks.check(account)
    checks.spent(account, FREE - 1)
    await checks.check(account)
    checks.spent(account, 1)
    with pytest.raises(GatewayError):
        await checks.check(account)
    assert store.reads == 1


async def test_an_allowance_is_read_again_once_stale_but_a_subscription_is_not(redis, account):
    store = Store()
    checks = gate(redis, store, refresh_s=0.0)
    await checks.check(account)
    await use(redis, account, FREE)  # another replica's calls
    with pytest.raises(GatewayError):
        await checks.check(account)
    store.states[account] = BillingState(customer_id="cus_1", status="active")
    checks.invalidate(account)
    reads = store.reads
    for _ in range(3):
        await checks.check(account)
    assert store.reads == reads + 1  # subscribed: only a webhook changes it


async def test_a_read_that_raced_an_invalidation_is_not_kept(redis, account):
    store = Store()
    checks = gate(redis, store)

    async def racing_state(account_id):
        checks.invalidate(account_id)  # a webhook lands while this replica reads
        return BillingState()

    store.state = racing_state
    await checks.check(account)
    store.state = Store.state.__get__(store)
    await checks.check(account)
    assert store.reads == 1  # the raced read was answered but not cached


async def test_redis_away_the_last_decision_stands_while_cached_keys_are_served(redis, account):
    """As verified keys are (core.invalidation): a decision known before the outage still
    answers for ``cache_outage_serve_s``, then the outage is a 503 like everything else."""
    store = Store()
    usable = [True]
    checks = BillingGate(store, UsageStore(redis), FREE, grace_s=3600, refresh_s=0.0,
                         cache_usable=lambda: usable[0])
    await checks.check(account)  # remembered: on its free allowance

    async def unreachable(account_id):
        raise RedisConnectionError("redis away")

    store.state = unreachable
    await checks.check(account)  # stale, and Redis cannot say more: the last decision stands
    usable[0] = False  # past the outage bound
    with pytest.raises(RedisConnectionError):
        await checks.check(account)
    with pytest.raises(RedisConnectionError):  # nothing remembered for this one
        await BillingGate(store, UsageStore(redis), FREE, 3600).check("acct_never_seen")
