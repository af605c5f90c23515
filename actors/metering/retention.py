"""Retention windows: how long per-call records, monthly usage counters and the audit trail stay.

``apply_retention`` is one pass (``actors.housekeeping`` runs it periodically; any number of
passes, in any order, leave the same result, and a second pass at the same ``now_ms`` changes
nothing):

- ``neuroapi:calls`` (per-call records): ``XTRIM MINID`` exact at ``now_ms - calls_days``. Age is
  the entry's stream id, i.e. when Redis appended it (within ``metering_max_age_s`` of the call,
  later only for records replayed from a metering spill, which then stay a full window from the
  replay). An entry exactly ``calls_days`` old stays, one millisecond older goes.
- ``neuroapi:counted:<request_id>`` (dedupe marks): not scanned here. A mark is set in the same
  script as its stream entry, so with ``UsageStore(dedupe_ttl_s=dedupe_ttl_s(calls_days))`` it
  expires when its entry leaves the window. Marks written under an older, longer TTL keep it.
- ``neuroapi:account:<id>:usage:<YYYY-MM>`` (accounting counters): with M the UTC month of
  ``now_ms``, the counters of month M - ``usage_months`` and before are deleted, those of
  M - ``usage_months`` + 1 .. M stay (``usage_months`` months, the current one included). A
  month that still owes a Stripe usage report (at or after the account's ``open_from`` cursor,
  ``actors.billing.reporter``) is kept whatever its age: deleting it would lose revenue.
  Keys whose month part is not YYYY-MM are left alone.
- ``neuroapi:audit``: ``XTRIM MINID`` exact at ``now_ms - audit_days``, as for the calls.

The stream caps (``MAXLEN ~``) still apply on top: whichever removes an entry first."""

from __future__ import annotations

import re

import redis.asyncio as aioredis

from actors.accounts.store import account_usage_key
from actors.billing.reporter import cursor_key
from actors.metering.record import current_month
from actors.metering.usage_store import CALLS_STREAM
from core.audit import AUDIT_STREAM

DAY_MS = 86_400_000
_USAGE_PATTERN = account_usage_key("*", "*")
_USAGE_PREFIX, _USAGE_INFIX, _ = account_usage_key("\0", "\0").split("\0")  # "neuroapi:account:", ":usage:"
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
SCAN_COUNT = 1000


def dedupe_ttl_s(calls_days: int) -> int:
    """The ``UsageStore`` dedupe-mark TTL that follows the calls window: a mark lives as long
    as its call's stream entry. Retries of a batch end within minutes, far inside a day."""
    if calls_days < 1:
        raise ValueError("calls_days must be at least 1")
    return calls_days * DAY_MS // 1000


def months_before(month: str, count: int) -> str:
    """``month`` (YYYY-MM) moved ``count`` months back."""
    index = int(month[:4]) * 12 + int(month[5:7]) - 1 - count
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


async def _trim_older_than(redis: aioredis.Redis, stream: str, threshold_ms: int) -> int:
    if threshold_ms <= 0:
        return 0  # nothing can be older than the epoch
    # Exact (not ~): the window is a promise about data kept, not a memory bound.
    return int(await redis.xtrim(stream, minid=str(threshold_ms), approximate=False))


async def _delete_old_usage(redis: aioredis.Redis, last_deleted_month: str) -> int:
    deleted = 0
    async for key in redis.scan_iter(match=_USAGE_PATTERN, count=SCAN_COUNT):
        key = key.decode() if isinstance(key, bytes) else key
        account_id, _, month = key.removeprefix(_USAGE_PREFIX).rpartition(_USAGE_INFIX)
        if not _MONTH.fullmatch(month) or month > last_deleted_month:
            continue
        open_from = await redis.hget(cursor_key(account_id), "open_from")
        if open_from and month >= (open_from.decode() if isinstance(open_from, bytes) else open_from):
            continue  # not yet reported to Stripe in full
        deleted += int(await redis.unlink(key))
    return deleted


async def apply_retention(redis: aioredis.Redis, now_ms: int, calls_days: int, usage_months: int,
                          audit_days: int) -> dict[str, int]:
    """One retention pass at ``now_ms``; how many of each were removed:
    {"calls": stream entries, "usage": monthly counter hashes, "audit": stream entries}."""
    if calls_days < 1 or usage_months < 1 or audit_days < 1:
        raise ValueError("retention windows must be at least one day / one month")
    return {
        "calls": await _trim_older_than(redis, CALLS_STREAM, now_ms - calls_days * DAY_MS),
        "usage": await _delete_old_usage(redis, months_before(current_month(now_ms), usage_months)),
        "audit": await _trim_older_than(redis, AUDIT_STREAM, now_ms - audit_days * DAY_MS),
    }
