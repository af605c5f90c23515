"""Retention windows (actors.metering.retention) against a real redis-server of this module's
own, with a controlled clock: stream entries carry explicit ids (their append time), and
``now_ms`` is passed in, so "just inside" and "just outside" each window are exact."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from actors.accounts.store import account_usage_key
from actors.billing.reporter import cursor_key
from actors.metering.retention import DAY_MS, apply_retention, dedupe_ttl_s
from actors.metering.usage_store import CALLS_STREAM, UsageStore, counted_key
from core.audit import AUDIT_STREAM, audit_fields
from tests.support.call_records import MARCH, record

NOW = MARCH  # 2026-03-15T12:00:00Z
NEW_YEAR = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


async def ids(redis, stream: str) -> list[str]:
    return [entry_id for entry_id, _ in await redis.xrange(stream)]


async def snapshot(redis) -> dict[str, object]:
    """Every key with its value, whatever its type."""
    state: dict[str, object] = {}
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        if kind == "stream":
            state[key] = await redis.xrange(key)
        elif kind == "hash":
            state[key] = await redis.hgetall(key)
        elif kind == "set":
            state[key] = await redis.smembers(key)
        else:
            state[key] = await redis.get(key)
    return state


async def test_calls_older_than_the_window_go_those_at_or_inside_it_stay(redis):
    edge = NOW - 30 * DAY_MS
    for entry_id in ("1000-0", f"{edge - 1}-0", f"{edge - 1}-7", f"{edge}-0", f"{edge}-3",
                     f"{edge + 1}-0", f"{NOW}-0"):
        await redis.xadd(CALLS_STREAM, {"request_id": entry_id}, id=entry_id)

    trimmed = await apply_retention(redis, NOW, calls_days=30, usage_months=12, audit_days=400)

    assert trimmed == {"calls": 3, "usage": 0, "audit": 0}
    assert await ids(redis, CALLS_STREAM) == [f"{edge}-0", f"{edge}-3", f"{edge + 1}-0", f"{NOW}-0"]
    # The record itself is untouched, not just its id.
    [(_, fields)] = await redis.xrange(CALLS_STREAM, min=f"{NOW}-0")
    assert fields == {"request_id": f"{NOW}-0"}


async def test_each_stream_follows_its_own_window(redis):
    two_days_old = f"{NOW - 2 * DAY_MS}-0"
    await redis.xadd(CALLS_STREAM, {"request_id": "r"}, id=two_days_old)
    for entry_id in (f"{NOW - 400 * DAY_MS - 1}-0", f"{NOW - 400 * DAY_MS}-0", two_days_old):
        await redis.xadd(AUDIT_STREAM, audit_fields("admin", "scope.set", account_id="acct_1"), id=entry_id)

    trimmed = await apply_retention(redis, NOW, calls_days=1, usage_months=12, audit_days=400)

    assert trimmed == {"calls": 1, "usage": 0, "audit": 1}
    assert await redis.xlen(CALLS_STREAM) == 0
    assert await ids(redis, AUDIT_STREAM) == [f"{NOW - 400 * DAY_MS}-0", two_days_old]


async def test_usage_counters_older_than_the_months_kept_are_deleted(redis):
    kept = {account_usage_key("acct_a", month): {"requests": "1", "cost_micro_units": month[-2:]}
            for month in ("2025-04", "2025-12", "2026-02", "2026-03")}
    gone = [account_usage_key("acct_a", "2025-03"), account_usage_key("acct_a", "2025-02"),
            account_usage_key("acct_b", "2019-07")]
    for key in [*kept, *gone]:
        await redis.hset(key, mapping={"requests": "1", "cost_micro_units": key[-2:]})
    # Not monthly counters: left alone whatever they look like.
    others = {"neuroapi:account:acct_a": {"email": "a@example.com", "status": "active"},
              "neuroapi:account:acct_a:usage:junk": {"requests": "5"},
              "neuroapi:account:acct_a:usage:2020-13": {"requests": "5"}}
    for key, value in others.items():
        await redis.hset(key, mapping=value)
    await redis.sadd("neuroapi:account:acct_a:keys", "neuro_abcd1234")

    # March 2026, 12 months: 2025-04 .. 2026-03 stay, 2025-03 and before go.
    trimmed = await apply_retention(redis, NOW, calls_days=30, usage_months=12, audit_days=400)

    assert trimmed == {"calls": 0, "usage": 3, "audit": 0}
    for key in gone:
        assert not await redis.exists(key)
    for key in kept:
        assert await redis.hgetall(key) == {"requests": "1", "cost_micro_units": key[-2:]}
    for key, value in others.items():
        assert await redis.hgetall(key) == value
    assert await redis.smembers("neuroapi:account:acct_a:keys") == {"neuro_abcd1234"}


@pytest.mark.parametrize(("now_ms", "stays", "goes"), [
    (NEW_YEAR, "2026-01", "2025-12"),  # the first instant of January: December is out
    (NEW_YEAR - 1, "2025-12", "2025-11"),  # the last millisecond of December: it is current
])
async def test_the_month_boundary_is_the_utc_month_of_now(redis, now_ms, stays, goes):
    for month in (stays, goes):
        await redis.hset(account_usage_key("acct_a", month), "requests", 1)

    trimmed = await apply_retention(redis, now_ms, calls_days=30, usage_months=1, audit_days=400)

    assert trimmed["usage"] == 1
    assert await redis.exists(account_usage_key("acct_a", stays))
    assert not await redis.exists(account_usage_key("acct_a", goes))


async def test_a_month_not_yet_reported_to_stripe_is_kept_whatever_its_age(redis):
    # acct_c's reporter has been failing since January 2025: that month still owes a report.
    await redis.hset(cursor_key("acct_c"), "open_from", "2025-01")
    for month in ("2024-12", "2025-01", "2025-02"):
        await redis.hset(account_usage_key("acct_c", month), "cost_micro_units", 5_000_000)
        await redis.hset(account_usage_key("acct_d", month), "cost_micro_units", 5_000_000)

    trimmed = await apply_retention(redis, NOW, calls_days=30, usage_months=12, audit_days=400)

    assert trimmed["usage"] == 4
    assert not await redis.exists(account_usage_key("acct_c", "2024-12"))  # reported and closed
    assert await redis.exists(account_usage_key("acct_c", "2025-01"))
    assert await redis.exists(account_usage_key("acct_c", "2025-02"))
    assert not [m for m in ("2024-12", "2025-01", "2025-02")
                if await redis.exists(account_usage_key("acct_d", m))]


async def test_a_dedupe_mark_expires_when_its_call_leaves_the_window(redis):
    store = UsageStore(redis, dedupe_ttl_s=dedupe_ttl_s(7))
    call = record()
    assert await store.write([call]) == 1
    [entry_id] = await ids(redis, CALLS_STREAM)
    appended_ms = int(entry_id.split("-")[0])
    # Both written by one script: the mark's expiry is the instant the entry leaves the window.
    expires_ms = await redis.execute_command("PEXPIRETIME", counted_key(call.request_id))
    assert abs(expires_ms - (appended_ms + 7 * DAY_MS)) < 1000

    assert (await apply_retention(redis, appended_ms + 7 * DAY_MS, 7, 12, 400))["calls"] == 0
    assert (await apply_retention(redis, appended_ms + 7 * DAY_MS + 1, 7, 12, 400))["calls"] == 1
    assert await redis.xlen(CALLS_STREAM) == 0
    # Counters are accounting, not per-call data: the call still counts for its month.
    assert (await store.month("acct_1", "2026-03"))["requests"] == 1


async def test_a_second_pass_changes_nothing(redis):
    for age_days in (401, 399, 31, 29, 0):  # oldest first: stream ids ascend
        entry_id = f"{NOW - age_days * DAY_MS}-0"
        await redis.xadd(CALLS_STREAM, {"request_id": entry_id}, id=entry_id)
        await redis.xadd(AUDIT_STREAM, audit_fields("admin", "x"), id=entry_id)
    for month in ("2018-01", "2019-03", "2019-04", "2026-03"):
        await redis.hset(account_usage_key("acct_a", month), "requests", 1)

    first = await apply_retention(redis, NOW, calls_days=30, usage_months=84, audit_days=400)
    after_first = await snapshot(redis)
    second = await apply_retention(redis, NOW, calls_days=30, usage_months=84, audit_days=400)

    # 84 months: 2019-04 .. 2026-03 stay; 2019-03 (= 2026-03 minus 84 months) and 2018-01 go.
    assert first == {"calls": 3, "usage": 2, "audit": 1}
    assert await redis.exists(account_usage_key("acct_a", "2019-04"))
    assert second == {"calls": 0, "usage": 0, "audit": 0}
    assert await snapshot(redis) == after_first


@pytest.mark.parametrize("windows", [(0, 12, 400), (30, 0, 400), (30, 12, 0), (-1, 12, 400)])
async def test_an_empty_window_is_refused_before_anything_is_removed(redis, windows):
    await redis.xadd(CALLS_STREAM, {"request_id": "old"}, id="1000-0")
    await redis.hset(account_usage_key("acct_a", "2001-01"), "requests", 1)
    with pytest.raises(ValueError):
        await apply_retention(redis, NOW, *windows)
    assert await redis.xlen(CALLS_STREAM) == 1
    assert await redis.exists(account_usage_key("acct_a", "2001-01"))
    with pytest.raises(ValueError):
        dedupe_ttl_s(0)
