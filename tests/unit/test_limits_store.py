"""The limits engine (actors/limits/store.py) against a real redis-server: each limit refuses
exactly at its bound, a refusal records nothing, settle corrects the windows and the budgets once,
expired reservations are released, months roll over by Redis's clock; and the Limits value
(core/limits.py) round-trips and refuses what it cannot hold."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

import pytest

from actors.limits.store import (LimitStore, Refused, Reserved, held_key, month_key, next_month_ms,
                                 requests_key, tokens_key)
from actors.metering.record import current_month
from core.limits import MAX_MICRO, Limits, LimitsError, RateHeaders, duration_text, micro_from_cost_units


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


class Clock:
    """A test's clock in ms, passed to the scripts instead of Redis's TIME."""

    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, milliseconds: int) -> None:
        self.now += milliseconds


@pytest.fixture
def clock():
    return Clock(ms(2025, 6, 15, 12))


@pytest.fixture
def store(redis, clock):
    return LimitStore(redis, reservation_ttl_s=30, clock=clock)


async def state(redis) -> dict:
    """Everything the engine keeps, by key."""
    out = {}
    for key in sorted(await redis.keys("neuroapi:limits:*")):
        kind = await redis.type(key)
        if kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            out[key] = await redis.hgetall(key)
        else:
            out[key] = await redis.get(key)
    return out


# --- RPM -------------------------------------------------------------------------------------

async def test_rpm_admits_exactly_rpm_requests_a_minute_and_says_when_to_retry(store, clock):
    limits = Limits(rpm=3)
    first_at = clock.now
    for i in range(3):
        reserved = await store.reserve("kp", "acc", limits, 0, 0, f"r{i}")
        assert isinstance(reserved, Reserved)
        assert reserved.headers.requests_remaining == 2 - i
        clock.advance(1000)
    refused = await store.reserve("kp", "acc", limits, 0, 0, "r3")
    assert isinstance(refused, Refused) and refused.kind == "rpm" and refused.kinds == ("rpm",)
    assert refused.retry_after_s == pytest.approx(60 - 3)  # until the first leaves the window
    assert refused.headers.as_headers() == {
        "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "59s"}  # the newest, 1 s old, leaves in 59 s

    clock.now = first_at + 60_000 - 1  # 1 ms before the first leaves
    refused = await store.reserve("kp", "acc", limits, 0, 0, "r4")
    assert isinstance(refused, Refused) and refused.retry_after_s == pytest.approx(0.001)
    clock.now = first_at + 60_000
    assert isinstance(await store.reserve("kp", "acc", limits, 0, 0, "r5"), Reserved)
    assert isinstance(await store.reserve("kp", "acc", limits, 0, 0, "r6"), Refused)


async def test_windows_are_per_key(store):
    limits = Limits(rpm=1)
    assert isinstance(await store.reserve("kp-a", "acc", limits, 0, 0, "r1"), Reserved)
    assert isinstance(await store.reserve("kp-b", "acc", limits, 0, 0, "r2"), Reserved)
    assert isinstance(await store.reserve("kp-a", "acc", limits, 0, 0, "r3"), Refused)


async def test_a_lowered_rpm_waits_for_enough_requests_to_leave(store, clock):
    start = clock.now
    for i in range(5):
        await store.reserve("kp", "acc", Limits(rpm=10), 0, 0, f"r{i}")
        clock.advance(1000)
    refused = await store.reserve("kp", "acc", Limits(rpm=2), 0, 0, "r5")
    # 5 in the window, room for a third once 4 have left: the 4th left at start + 3 s + 60 s
    assert refused.retry_after_s == pytest.approx((start + 63_000 - clock.now) / 1000)


# --- TPM -------------------------------------------------------------------------------------

async def test_tpm_admits_up_to_the_bound_and_counts_real_tokens_once_settled(store, clock):
    limits = Limits(tpm=1000)
    first = await store.reserve("kp", "acc", limits, 600, 0, "r1")
    clock.advance(10_000)
    second = await store.reserve("kp", "acc", limits, 400, 0, "r2")  # exactly at the bound
    assert isinstance(second, Reserved) and second.headers.tokens_remaining == 0
    refused = await store.reserve("kp", "acc", limits, 1, 0, "r3")
    assert isinstance(refused, Refused) and refused.kind == "tpm"
    assert refused.retry_after_s == pytest.approx(50)  # the 600 leave 60 s after the first call

    assert await store.settle(first, 100, 0)  # it used 100 of its 600
    assert isinstance(await store.reserve("kp", "acc", limits, 500, 0, "r4"), Reserved)
    assert isinstance(await store.reserve("kp", "acc", limits, 1, 0, "r5"), Refused)

    clock.advance(50_000)  # the first call (now 100 tokens) left the window
    ok = await store.reserve("kp", "acc", limits, 100, 0, "r6")
    assert isinstance(ok, Reserved) and ok.headers.tokens_remaining == 0


async def test_a_call_bigger_than_the_tpm_is_never_admitted(store):
    refused = await store.reserve("kp", "acc", Limits(tpm=100), 101, 0, "r1")
    assert isinstance(refused, Refused) and refused.kind == "tpm" and refused.retry_after_s is None


async def test_headers_carry_both_windows(store, clock):
    limits = Limits(rpm=10, tpm=5000)
    await store.reserve("kp", "acc", limits, 1200, 0, "r1")
    clock.advance(1500)
    reserved = await store.reserve("kp", "acc", limits, 300, 0, "r2")
    assert reserved.headers == RateHeaders(10, 8, 60_000, 5000, 3500, 60_000)
    assert reserved.headers.as_headers() == {
        "x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "8",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "5000", "x-ratelimit-remaining-tokens": "3500",
        "x-ratelimit-reset-tokens": "1m0s"}
    only_budget = await store.reserve("kp", "acc", Limits(key_budget_micro=10), 0, 0, "r3")
    assert only_budget.headers.as_headers() == {}


# --- budgets ---------------------------------------------------------------------------------

async def test_key_budget_refuses_exactly_past_it_and_says_what_is_left(store, clock):
    limits = Limits(key_budget_micro=1000)
    first = await store.reserve("kp", "acc", limits, 0, 600, "r1")
    assert isinstance(await store.reserve("kp", "acc", limits, 0, 400, "r2"), Reserved)  # = budget
    refused = await store.reserve("kp", "acc", limits, 0, 1, "r3")
    assert isinstance(refused, Refused) and refused.kind == "key_budget"
    assert (refused.budget_micro, refused.left_micro) == (1000, 0)
    assert refused.retry_after_s == pytest.approx((ms(2025, 7, 1) - clock.now) / 1000)

    assert await store.settle(first, 0, 100)  # cost 100 of the 600 reserved
    assert isinstance(await store.reserve("kp", "acc", limits, 0, 501, "r4"), Refused)
    refused = await store.reserve("kp", "acc", limits, 0, 501, "r4")
    assert refused.left_micro == 500
    assert isinstance(await store.reserve("kp", "acc", limits, 0, 500, "r5"), Reserved)
    spend = await store.spent("kp", "acc")
    assert (spend.key_spent_micro, spend.key_reserved_micro) == (100, 900)


async def test_account_budget_spans_the_accounts_keys(store):
    limits = Limits(account_budget_micro=1000)
    assert isinstance(await store.reserve("kp-a", "acc", limits, 0, 700, "r1"), Reserved)
    refused = await store.reserve("kp-b", "acc", limits, 0, 301, "r2")
    assert isinstance(refused, Refused) and refused.kind == "account_budget"
    assert refused.left_micro == 300
    assert isinstance(await store.reserve("kp-b", "acc", limits, 0, 300, "r3"), Reserved)
    assert isinstance(await store.reserve("kp-c", "other", limits, 0, 1000, "r4"), Reserved)


async def test_a_call_over_the_whole_budget_is_never_admitted(store):
    refused = await store.reserve("kp", "acc", Limits(key_budget_micro=10), 0, 11, "r1")
    assert refused.kind == "key_budget" and refused.retry_after_s is None


async def test_the_longest_wait_names_the_refusal(store):
    limits = Limits(rpm=1, key_budget_micro=100)
    await store.reserve("kp", "acc", limits, 0, 100, "r1")
    refused = await store.reserve("kp", "acc", limits, 0, 1, "r2")
    assert refused.kinds == ("key_budget", "rpm") and refused.kind == "key_budget"
    refused = await store.reserve("kp", "acc", Limits(rpm=1, key_budget_micro=1000), 0, 1, "r3")
    assert refused.kind == "rpm"


async def test_money_is_exact_beyond_a_doubles_precision(store):
    budget = MAX_MICRO - 1  # 2^62 - 1: a double cannot tell it from its neighbours
    await store.seed_month("kp", "acc", spent_micro=budget - 5)
    limits = Limits(key_budget_micro=budget, account_budget_micro=budget)
    assert isinstance(await store.reserve("kp", "acc", limits, 0, 6, "r1"), Refused)
    reserved = await store.reserve("kp", "acc", limits, 0, 5, "r2")
    assert isinstance(reserved, Reserved)
    assert isinstance(await store.reserve("kp", "acc", limits, 0, 1, "r3"), Refused)
    await store.settle(reserved, 0, 4)
    assert isinstance(await store.reserve("kp", "acc", limits, 0, 1, "r4"), Reserved)
    assert (await store.spent("kp", None)).key_spent_micro == budget - 1


# --- refusals, settle, expiry ----------------------------------------------------------------

async def test_a_refusal_records_nothing(store, redis, clock):
    limits = Limits(rpm=5, tpm=1000, key_budget_micro=1000, account_budget_micro=5000)
    await store.reserve("kp", "acc", limits, 500, 900, "r1")
    before = await state(redis)
    for tokens, cost in ((10, 101), (501, 0)):  # over the key budget; over the TPM
        assert isinstance(await store.reserve("kp", "acc", limits, tokens, cost, "rx"), Refused)
    assert await state(redis) == before


@pytest.mark.parametrize("limits", [
    Limits(rpm=1, tpm=100, key_budget_micro=100, account_budget_micro=100),
    Limits(rpm=1, tpm=100), Limits(rpm=1)])
async def test_a_retried_reservation_counts_once(store, redis, clock, monkeypatch, limits):
    """redis-py resends a command whose reply was lost; Redis may have run it already."""
    monkeypatch.setattr("actors.limits.store.secrets.token_hex", lambda n: "same")
    first = await store.reserve("kp", "acc", limits, 100, 100, "r1")
    before = await state(redis)
    clock.advance(5)
    again = await store.reserve("kp", "acc", limits, 100, 100, "r1")
    assert isinstance(again, Reserved) and again.at_ms == first.at_ms
    assert again.expires_at_ms == first.expires_at_ms
    assert await state(redis) == before
    monkeypatch.undo()
    assert isinstance(await store.reserve("kp", "acc", limits, 1, 1, "r2"), Refused)


async def test_settle_counts_once_however_often_it_is_called(store):
    limits = Limits(tpm=1000, key_budget_micro=1000, account_budget_micro=1000)
    reserved = await store.reserve("kp", "acc", limits, 800, 800, "r1")
    results = await asyncio.gather(*(store.settle(reserved, 100, 300) for _ in range(5)))
    assert sorted(results) == [False] * 4 + [True]
    spend = await store.spent("kp", "acc")
    assert (spend.key_spent_micro, spend.key_reserved_micro) == (300, 0)
    assert (spend.account_spent_micro, spend.account_reserved_micro) == (300, 0)
    ok = await store.reserve("kp", "acc", limits, 900, 700, "r2")  # 100 + 900 tokens, 300 + 700
    assert isinstance(ok, Reserved) and ok.headers.tokens_remaining == 0


async def test_settle_without_a_budget_corrects_the_tpm_once(store):
    limits = Limits(tpm=1000)
    reserved = await store.reserve("kp", "acc", limits, 1000, 0, "r1")
    assert await store.settle(reserved, 200, 0)
    assert not await store.settle(reserved, 200, 0)
    assert not await store.settle(reserved, 50, 0)
    assert isinstance(await store.reserve("kp", "acc", limits, 800, 0, "r2"), Reserved)
    assert isinstance(await store.reserve("kp", "acc", limits, 1, 0, "r3"), Refused)
    rpm_only = await store.reserve("kp", "acc", Limits(rpm=5), 10, 10, "r4")
    assert not await store.settle(rpm_only, 1, 1)  # nothing to settle: no round trip


async def test_an_unsettled_reservation_is_released_at_its_expiry(redis, clock):
    store = LimitStore(redis, reservation_ttl_s=2, clock=clock)  # the replica died holding it
    limits = Limits(key_budget_micro=1000, account_budget_micro=1000)
    lost = await store.reserve("kp", "acc", limits, 0, 1000, "r1")
    clock.advance(1999)
    assert isinstance(await store.reserve("kp-b", "acc", limits, 0, 1, "r2"), Refused)
    clock.advance(1)
    assert not await store.settle(lost, 0, 10)  # at its expiry: released, a settle counts nothing
    clock.advance(-1)
    clock.advance(1)  # expired: released from the account (seen by another key's call) ...
    assert isinstance(await store.reserve("kp-b", "acc", limits, 0, 1000, "r3"), Reserved)
    # ... and from its own key
    assert isinstance(await store.reserve("kp", "acc", Limits(key_budget_micro=1000), 0, 1000, "r4"),
                      Reserved)
    assert not await store.settle(lost, 0, 1000)  # too late: it was released, counts nothing
    spend = await store.spent("kp", "acc")
    assert (spend.key_spent_micro, spend.key_reserved_micro) == (0, 1000)
    assert (spend.account_spent_micro, spend.account_reserved_micro) == (0, 2000)


async def test_spent_releases_expired_reservations_too(redis, clock):
    store = LimitStore(redis, reservation_ttl_s=1, clock=clock)
    await store.reserve("kp", "acc", Limits(key_budget_micro=50), 0, 40, "r1")
    assert (await store.spent("kp", "acc")).key_reserved_micro == 40
    clock.advance(1000)
    assert (await store.spent("kp", "acc")).as_dict() == {
        "month": "2025-06", "key": {"spent_micro": 0, "reserved_micro": 0},
        "account": {"spent_micro": 0, "reserved_micro": 0}}


async def test_every_key_expires(store, redis):
    limits = Limits(rpm=5, tpm=1000, key_budget_micro=1000, account_budget_micro=5000)
    reserved = await store.reserve("kp", "acc", limits, 500, 900, "r1")
    await store.settle(reserved, 100, 100)
    await store.seed_month(account_id="acc2", spent_micro=7)
    for key in await redis.keys("neuroapi:limits:*"):
        ttl = await redis.ttl(key)
        assert 0 < ttl <= 35 * 86400, key
        if key in (requests_key("kp"), tokens_key("kp")):
            assert ttl <= 65


# --- months ----------------------------------------------------------------------------------

async def test_a_new_month_starts_empty_and_late_settles_count_to_their_month(store, redis, clock):
    clock.now = ms(2025, 6, 30, 23, 59, 59) + 500
    limits = Limits(key_budget_micro=1000, account_budget_micro=1000)
    june = await store.reserve("kp", "acc", limits, 0, 1000, "r1")
    refused = await store.reserve("kp", "acc", limits, 0, 1, "r2")
    assert refused.retry_after_s == pytest.approx(0.5)
    clock.advance(600)
    july = await store.reserve("kp", "acc", limits, 0, 1000, "r3")
    assert isinstance(july, Reserved) and july.month == "2025-07"
    assert await store.settle(june, 0, 800)
    assert await redis.hget(month_key("key:kp", "2025-06"), "spent") == "800"
    assert await redis.zcard(held_key("key:kp", "2025-06")) == 0
    spend = await store.spent("kp", "acc")
    assert (spend.month, spend.key_spent_micro, spend.key_reserved_micro) == ("2025-07", 0, 1000)


async def test_the_month_is_redis_s_even_when_a_replica_s_clock_disagrees(store, clock, monkeypatch):
    clock.now = ms(2025, 7, 1) + 10  # Redis's clock: July; this replica still thinks June
    monkeypatch.setattr(store, "_month_guess", lambda: "2025-06")
    reserved = await store.reserve("kp", "acc", Limits(key_budget_micro=5), 0, 5, "r1")
    assert reserved.month == "2025-07"
    assert (await store.spent("kp", None)).month == "2025-07"
    assert await store.seed_month("kp", spent_micro=1) == "2025-07"


async def test_the_scripts_month_matches_python_s(redis):
    """month_of in Lua against datetime, at every month boundary (± 1 ms) of 1970-2200 and at
    random times."""
    rng = random.Random(19)
    times = [t + d for year in range(1970, 2201) for month in range(1, 13)
             for t in [ms(year, month, 1)] for d in (-1, 0)]
    times += [rng.randrange(0, ms(2400, 1, 1)) for _ in range(2000)]
    times = [t for t in times if t > 0]
    store = LimitStore(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for t in times:  # the time passed as the clock, and Python's month for it
            await store._spent(keys=["a", "b"], args=[t, current_month(t)], client=pipe)
        replies = await pipe.execute()
    wrong = [(t, r) for t, r in zip(times, replies, strict=True) if r[0] != "ok"]
    assert not wrong[:5]


async def test_seed_only_raises_the_months_spend(store):
    assert await store.seed_month("kp", "acc", spent_micro=500) == "2025-06"
    await store.seed_month("kp", spent_micro=300)
    spend = await store.spent("kp", "acc")
    assert (spend.key_spent_micro, spend.account_spent_micro) == (500, 500)
    refused = await store.reserve("kp", "acc", Limits(account_budget_micro=1000), 0, 501, "r1")
    assert refused.left_micro == 500
    await store.seed_month(account_id="acc", spent_micro=1000, month="2025-05")
    assert (await store.spent(None, "acc")).account_spent_micro == 500


async def test_without_a_clock_the_scripts_use_redis_time(redis):
    store = LimitStore(redis)
    before = int(time.time() * 1000)
    reserved = await store.reserve("kp", "acc", Limits(rpm=1, key_budget_micro=1), 0, 1, "r1")
    assert before - 1000 <= reserved.at_ms <= int(time.time() * 1000) + 1000
    assert reserved.month == current_month(reserved.at_ms)
    refused = await store.reserve("kp", "acc", Limits(rpm=1, key_budget_micro=1), 0, 1, "r1")
    assert refused.kind == "key_budget"
    assert refused.retry_after_s == pytest.approx((next_month_ms(reserved.at_ms) - reserved.at_ms) / 1000,
                                                  abs=2)


async def test_bad_amounts_are_refused_before_redis(store):
    for tokens, cost in ((-1, 0), (0, -1), (1.5, 0), (0, MAX_MICRO + 1)):
        with pytest.raises(ValueError):
            await store.reserve("kp", "acc", Limits(rpm=1), tokens, cost, "r")


# --- the Limits value ------------------------------------------------------------------------

def test_limits_round_trip_as_json_with_budgets_as_cost_units_text():
    limits = Limits(rpm=60, tpm=90_000, key_budget_micro=12_500_000, account_budget_micro=3,
                    models=frozenset({"private", "gpt-4o-mini"}))
    data = limits.as_dict()
    assert data == {"rpm": 60, "tpm": 90_000, "monthly_budget_cost_units": "12.5",
                    "account_monthly_budget_cost_units": "0.000003",
                    "models": ["gpt-4o-mini", "private"]}
    assert Limits.from_dict(data) == limits
    assert Limits.from_dict({}) == Limits() and not Limits().counted()
    assert Limits.from_dict({"monthly_budget_cost_units": 7}).key_budget_micro == 7_000_000


def test_counted_and_the_allow_list():
    assert not Limits(models=frozenset({"private"})).counted()
    assert all(Limits(**{f: 1}).counted() for f in ("rpm", "tpm", "key_budget_micro",
                                                    "account_budget_micro"))
    only_private = Limits(models=frozenset({"private"}))
    assert only_private.allows_model("private") and not only_private.allows_model("gpt-4o")
    assert Limits().allows_model("anything")


@pytest.mark.parametrize("data", [
    {"rpm": 0}, {"tpm": -5}, {"rpm": True}, {"rpm": 1.5}, {"monthly_budget_cost_units": "-1"},
    {"monthly_budget_cost_units": "0.0000001"}, {"monthly_budget_cost_units": 1.5},
    {"monthly_budget_cost_units": "lots"}, {"monthly_budget_cost_units": "NaN"},
    {"account_monthly_budget_cost_units": "1e30"}, {"models": []}, {"models": "private"},
    {"models": [""]},
])
def test_limits_that_cannot_be_set(data):
    with pytest.raises(LimitsError):
        Limits.from_dict(data)


def test_cost_units_text_parses_exactly():
    assert micro_from_cost_units("0.000001") == 1
    assert micro_from_cost_units(" 1234.5 ") == 1_234_500_000
    assert micro_from_cost_units("0") == 0 and micro_from_cost_units(None) is None


def test_durations_are_written_as_openai_writes_them():
    assert [duration_text(v) for v in (0, 12, 999, 1000, 8640, 60_000, 90_500, 3_723_000)] == [
        "0s", "12ms", "999ms", "1s", "8.64s", "1m0s", "1m30.5s", "1h2m3s"]
