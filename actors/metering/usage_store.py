"""Where metering lands in Redis, counted once per request id however often a batch is retried.

Layout:

- ``neuroapi:calls`` (stream): one entry per call, the fields of ``CallRecord.to_fields()``;
  trimmed with ``MAXLEN ~ stream_max_entries`` (the operational log's retention cap).
- ``neuroapi:account:<id>:usage:<YYYY-MM>`` (hash, ``actors.accounts.store.account_usage_key``):
  the account's counters for the month, ``COUNTERS`` plus ``mode:<mode>:<counter>`` per mode
  (``(model)`` when the caller named a model). Billing records: no expiry.
- ``neuroapi:counted:<request_id>`` (string, expires after ``dedupe_ttl_s``): the mark that a
  call was counted. The script that sets it also appends the entry and adds the counters, all
  or nothing, so a batch retried after a lost reply (Redis applied it, we never heard) counts
  nothing twice. A retry later than ``dedupe_ttl_s`` would; retries end long before that.

A call with no account (rejected before a key was known) is appended to the stream but counts
toward no account. The three keys of one script must live on one node: a single Redis (or a
cluster with hash tags), which is what the gateway runs."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from actors.accounts.store import account_usage_key
from actors.metering.record import CallRecord, current_month

CALLS_STREAM = "neuroapi:calls"
COUNTERS = ("requests", "cost_micro_units", "prompt_tokens", "completion_tokens",
            "request_bytes", "response_bytes", "estimated_requests")
MODEL_NAMED = "(model)"  # the by_mode bucket of calls that named a model, not a mode

# One call, counted at most once. Scripts run atomically, and once a script has written,
# Redis runs it to the end (even out of memory), so the mark never exists without the counts.
_COUNT_ONCE = """
-- KEYS[1] neuroapi:counted:<request_id>  KEYS[2] the calls stream  KEYS[3] usage hash (optional)
-- ARGV[1] dedupe ttl s  ARGV[2] stream max entries  ARGV[3] n, the stream field/value args next
-- ARGV[4 .. 3+n] stream fields and values; after them, counter field / increment pairs
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0  -- already counted: a retried batch changes nothing
end
local n = tonumber(ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4, 3 + n))
if KEYS[3] then
  for i = 4 + n, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


def counted_key(request_id: str) -> str:
    return f"neuroapi:counted:{request_id}"


def _deltas(record: CallRecord) -> dict[str, int]:
    return {
        "requests": 1,
        "cost_micro_units": record.cost_micro_units,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "request_bytes": record.request_bytes,
        "response_bytes": record.response_bytes,
        "estimated_requests": 1 if record.estimated else 0,
    }


def _empty() -> dict[str, int]:
    return dict.fromkeys(COUNTERS, 0)


class UsageStore:
    def __init__(self, redis: aioredis.Redis, *, stream_max_entries: int = 1_000_000,
                 dedupe_ttl_s: int = 40 * 86400):
        if stream_max_entries < 1 or dedupe_ttl_s < 1:
            raise ValueError("stream_max_entries and dedupe_ttl_s must be positive")
        self._redis = redis
        self._stream_max_entries = stream_max_entries
        self._dedupe_ttl_s = dedupe_ttl_s
        self._count_once = redis.register_script(_COUNT_ONCE)

    def _script_call(self, record: CallRecord) -> tuple[list[str], list[str | int]]:
        if not record.request_id:
            raise ValueError("a call record needs a request_id")
        keys = [counted_key(record.request_id), CALLS_STREAM]
        stream_args = [part for item in record.to_fields().items() for part in item]
        args: list[str | int] = [self._dedupe_ttl_s, self._stream_max_entries, len(stream_args),
                                 *stream_args]
        if record.account_id:
            keys.append(account_usage_key(record.account_id, current_month(record.timestamp_ms)))
            mode = record.mode or MODEL_NAMED
            for counter, delta in _deltas(record).items():
                if delta:  # a missing field reads as 0; skipping zeros keeps the script short
                    args += [counter, delta, f"mode:{mode}:{counter}", delta]
        return keys, args

    async def write(self, records: list[CallRecord]) -> int:
        """Append and count ``records`` in one round trip; returns how many were newly counted
        (the rest were counted by an earlier attempt). Raises on connection errors and
        timeouts, having applied all, some or none of the batch: retrying it is safe."""
        if not records:
            return 0
        calls = [self._script_call(record) for record in records]  # validate before sending
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await self._count_once(keys=keys, args=args, client=pipe)
            results = await pipe.execute()
        return sum(int(result) for result in results)

    async def month(self, account_id: str, month: str) -> dict[str, Any]:
        """The account's counters for ``month`` (YYYY-MM), with ``by_mode`` per mode."""
        stored = await self._redis.hgetall(account_usage_key(account_id, month))
        totals: dict[str, Any] = _empty()
        by_mode: dict[str, dict[str, int]] = {}
        for field, value in stored.items():
            field = field.decode() if isinstance(field, bytes) else field
            if field.startswith("mode:"):
                mode, _, counter = field[len("mode:"):].rpartition(":")
                if counter in COUNTERS:
                    by_mode.setdefault(mode, _empty())[counter] = int(value)
            elif field in COUNTERS:
                totals[field] = int(value)
        totals["by_mode"] = by_mode
        return totals
