"""Metering: exact money, the call record, and idempotent counting in a real redis-server of
this module's own (``aof_redis``: it can be stopped and restarted with its data)."""

from __future__ import annotations

from dataclasses import fields, replace
from decimal import Decimal

import pytest

from actors.accounts.store import account_usage_key
from actors.metering.record import CallRecord, current_month, estimate_tokens
from actors.metering.usage_store import CALLS_STREAM, UsageStore, counted_key
from config.catalog import Price
from config.settings import ConfigError, load_settings
from core.backend import Usage
from core.money import cost_micro_units, cost_units_text
from tests.support.call_records import MARCH, record

# ---- money -----------------------------------------------------------------------------------

def test_cost_is_an_exact_integer_product_of_whole_prices():
    price = Price(input=150000, output=600000)  # gpt-4o-mini: US$0.15 / US$0.60 per million
    assert cost_micro_units(price, 1, 0) == 150000
    assert cost_micro_units(price, 1000, 500) == 1000 * 150000 + 500 * 600000
    assert cost_micro_units(price, 0, 0) == 0
    # Far past float's 2**53 exact range: still exact.
    big = 10**15 + 7
    expected = big * 150000 + (big + 1) * 600000
    assert cost_micro_units(price, big, big + 1) == expected
    assert expected > 2**53 and float(expected) != expected


def test_fractional_prices_are_exact_and_round_half_up_once_per_call():
    price = Price(input=Decimal("0.5"), output=Decimal("0.25"))
    assert cost_micro_units(price, 2, 4) == 2  # 1 + 1, exact
    assert cost_micro_units(price, 1, 0) == 1  # 0.5 rounds up
    assert cost_micro_units(price, 0, 1) == 0  # 0.25 rounds down
    assert cost_micro_units(price, 1, 2) == 1  # 0.5 + 0.5 = 1
    assert cost_micro_units(price, 3, 3) == 2  # 1.5 + 0.75 = 2.25
    # A YAML float goes through its text, so 0.1 is one tenth, not 0.1000000000000000055...
    tenth = Price(input=0.1, output=0.1)
    assert cost_micro_units(tenth, 10**18, 0) == 10**17
    with pytest.raises(ValueError):
        cost_micro_units(price, -1, 0)


def test_prompt_cache_reads_and_writes_cost_their_own_prices_exactly():
    # claude-haiku-4-5: US$1 input, US$0.10 cache read, US$1.25 cache write, US$5 output per million.
    haiku = load_settings(environ={}).prices["claude-haiku-4-5"]
    assert (haiku.input, haiku.cache_read, haiku.cache_write, haiku.output) == (1000000, 100000, 1250000, 5000000)
    # 2,000 prompt tokens: 1,500 read from the cache, 400 written to it, 100 uncached; 50 completion.
    assert cost_micro_units(haiku, 2000, 50, cached_tokens=1500, cache_write_tokens=400) == (
        100 * 1000000 + 1500 * 100000 + 400 * 1250000 + 50 * 5000000)  # 1,000,000,000: 1,000 cost_units
    # Before cache prices, the same call cost 2,000 * input + 50 * output: 2.25x what was billed now.
    assert cost_micro_units(haiku, 2000, 50) == 2_250_000_000
    # OpenAI bills cache reads lower and has no write price: writes cost input.
    mini = load_settings(environ={}).prices["gpt-4o-mini"]
    assert cost_micro_units(mini, 1000, 0, cached_tokens=600) == 400 * 150000 + 600 * 75000
    assert cost_micro_units(Price(input=7, output=1), 10, 0, cached_tokens=4, cache_write_tokens=6) == 70
    with pytest.raises(ValueError):  # cached tokens are part of the prompt, never more
        cost_micro_units(haiku, 10, 0, cached_tokens=8, cache_write_tokens=3)


def test_usage_carries_cache_and_reasoning_details_to_the_caller_and_the_price():
    usage = Usage(2000, 50, cached_tokens=1500, cache_write_tokens=400, reasoning_tokens=20)
    assert usage.as_openai() == {
        "prompt_tokens": 2000, "completion_tokens": 50, "total_tokens": 2050,
        "prompt_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 400},
        "completion_tokens_details": {"reasoning_tokens": 20}}
    assert Usage(3, 4).as_openai() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    haiku = load_settings(environ={}).prices["claude-haiku-4-5"]
    assert usage.priced(haiku).cost_micro_units == cost_micro_units(haiku, 2000, 50, 1500, 400)


def test_cost_units_text_is_exact():
    assert cost_units_text(1_500_000) == "1.5"
    assert cost_units_text(3) == "0.000003"
    assert cost_units_text(0) == "0"
    assert cost_units_text(2_000_000) == "2"
    assert cost_units_text(1_000_001) == "1.000001"
    assert cost_units_text(123_456_789_012_345_678_901) == "123456789012345.678901"
    assert cost_units_text(-1_500_000) == "-1.5"
    assert Decimal(cost_units_text(987_654_321)) * 1_000_000 == 987_654_321


def test_token_estimate_is_a_quarter_of_the_utf8_bytes_rounded_up():
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("é" * 4) == 2  # 8 bytes
    assert estimate_tokens("\ud800") == 1  # a lone surrogate does not raise


def test_current_month_is_utc():
    assert current_month(MARCH) == "2026-03"
    assert current_month(1_772_323_199_999) == "2026-02"  # 2026-02-28T23:59:59.999Z
    assert current_month(1_772_323_200_000) == "2026-03"
    assert current_month(0) == "1970-01"


def test_a_call_record_round_trips_through_stream_fields_and_holds_no_text():
    original = record(estimated=True, cost=123456789012345)
    entry = original.to_fields()
    assert all(isinstance(v, str) for v in entry.values())
    assert entry["estimated"] == "1" and entry["cost_micro_units"] == "123456789012345"
    assert CallRecord.from_fields(entry) == original
    assert CallRecord.from_fields({k.encode(): v.encode() for k, v in entry.items()}) == original
    assert {f.name for f in fields(CallRecord)} == set(entry)
    assert not {"messages", "content", "prompt", "completion", "text"} & set(entry)
    with pytest.raises(ValueError):
        CallRecord.from_fields({**entry, "estimated": "yes"})
    with pytest.raises(KeyError):
        CallRecord.from_fields({k: v for k, v in entry.items() if k != "status"})


def test_metering_settings_have_defaults_bounds_and_a_spill_dir_under_the_data_dir(tmp_path):
    settings = load_settings(environ={"NEUROAPI_DATA_DIR": str(tmp_path)})
    assert (settings.metering_max_batch, settings.metering_max_age_s) == (200, 0.2)
    assert (settings.metering_buffer_records, settings.calls_stream_max_entries) == (100_000, 1_000_000)
    assert settings.metering_spill_dir == tmp_path / "metering-spill"
    overlay = tmp_path / "neuroapi.yaml"
    overlay.write_text("metering_max_batch: 0\nmetering_max_age_s: 0\n")
    with pytest.raises(ConfigError, match="metering_max_batch") as error:
        load_settings(overlay, environ={"NEUROAPI_DATA_DIR": str(tmp_path)})
    assert "metering_max_age_s" in str(error.value)


# ---- the usage store -------------------------------------------------------------------------

async def test_writing_the_same_batch_twice_counts_once(aof_client):
    store = UsageStore(aof_client)
    batch = [record(cost=5), record(cost=6, estimated=True)]
    assert await store.write(batch) == 2
    assert await store.write(batch) == 0
    month = await store.month("acct_1", "2026-03")
    assert month["requests"] == 2 and month["cost_micro_units"] == 11
    assert month["estimated_requests"] == 1
    assert await aof_client.xlen(CALLS_STREAM) == 2
    assert 0 < await aof_client.ttl(counted_key(batch[0].request_id)) <= 40 * 86400


async def test_a_batch_half_counted_before_counts_the_other_half(aof_client):
    store = UsageStore(aof_client)
    batch = [record(cost=1) for _ in range(10)]
    assert await store.write(batch[::2]) == 5
    assert await store.write(batch) == 5
    month = await store.month("acct_1", "2026-03")
    assert month["requests"] == 10 and month["cost_micro_units"] == 10
    entries = await aof_client.xrange(CALLS_STREAM)
    assert sorted(e["request_id"] for _, e in entries) == sorted(r.request_id for r in batch)


async def test_month_layout_by_mode_and_calls_without_an_account(aof_client):
    store = UsageStore(aof_client)
    rejected = record("", mode="", status=401, prompt=0, completion=0, cost=0)
    batch = [
        record(mode="fast", prompt=10, completion=20, cost=100),
        record(mode="fast", prompt=1, completion=2, cost=10, estimated=True),
        record(mode="", prompt=5, completion=5, cost=1),  # named a model
        record(mode="smart", prompt=7, completion=0, cost=3, timestamp_ms=MARCH - 31 * 86400_000),
        rejected,
        record("acct_2", mode="fast", cost=1000),
    ]
    assert await store.write(batch) == 6
    march = await store.month("acct_1", "2026-03")
    fast = {"requests": 2, "cost_micro_units": 110, "prompt_tokens": 11, "completion_tokens": 22,
            "request_bytes": 200, "response_bytes": 600, "estimated_requests": 1}
    model_named = {"requests": 1, "cost_micro_units": 1, "prompt_tokens": 5, "completion_tokens": 5,
                   "request_bytes": 100, "response_bytes": 300, "estimated_requests": 0}
    assert march == {
        "requests": 3, "cost_micro_units": 111, "prompt_tokens": 16, "completion_tokens": 27,
        "request_bytes": 300, "response_bytes": 900, "estimated_requests": 1,
        "by_mode": {"fast": fast, "(model)": model_named},
    }
    february = await store.month("acct_1", "2026-02")
    assert february["requests"] == 1 and february["by_mode"]["smart"]["prompt_tokens"] == 7
    assert (await store.month("acct_2", "2026-03"))["cost_micro_units"] == 1000
    empty = await store.month("acct_none", "2026-03")
    assert empty["requests"] == 0 and empty["by_mode"] == {}
    raw = await aof_client.hgetall(account_usage_key("acct_1", "2026-03"))
    assert raw["mode:fast:requests"] == "2" and raw["mode:(model):cost_micro_units"] == "1"
    # The rejected call is in the stream, and under no account.
    entries = [e for _, e in await aof_client.xrange(CALLS_STREAM)]
    assert len(entries) == 6
    assert CallRecord.from_fields(entries[4]) == rejected
    assert not [k for k in await aof_client.keys("neuroapi:account::*")]
    # Billing counters do not expire.
    assert await aof_client.ttl(account_usage_key("acct_1", "2026-03")) == -1


async def test_the_stream_is_capped_approximately(aof_client):
    store = UsageStore(aof_client, stream_max_entries=100)
    for _ in range(10):
        await store.write([record() for _ in range(100)])
    assert 100 <= await aof_client.xlen(CALLS_STREAM) < 300  # MAXLEN ~ trims whole nodes
    assert (await store.month("acct_1", "2026-03"))["requests"] == 1000


async def test_a_record_without_a_request_id_is_refused_before_anything_is_sent(aof_client):
    store = UsageStore(aof_client)
    with pytest.raises(ValueError):
        await store.write([record(), replace(record(), request_id="")])
    assert await aof_client.xlen(CALLS_STREAM) == 0
