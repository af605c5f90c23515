"""Metered usage to Stripe, exactly once: each subscribed account's billable cost as billing meter
events, in whole cost_units, with nothing lost to a crash or an outage and nothing billed twice.

Unit: a meter event's ``value`` is whole cost_units (Stripe meter values are whole numbers here),
so the Stripe price is per cost_unit. The sub-unit remainder is never rounded: it stays owed and
goes out with a later event. For every account and month:

    sum(values sent for the month) * 1_000_000 + owed == billable + carry_in - carried_out

where ``billable = max(0, month_cost - max(free_micro, unbilled_at_subscribe))`` (the free
allowance and the usage before subscribing overlap: the larger is not billed), ``owed`` is what
is not yet reported (< 1 cost_unit after a clean pass), and ``carry_in``/``carried_out`` move a
month's last remainder on (below). Summed over months the carries cancel, so the values sent ×
1_000_000 plus what is still owed equals the billable metered cost exactly.

Month end: a month's remainder (< 1 cost_unit) is CARRIED into the next month, never rounded.
Once ``close_after_s`` has passed after the month ended (late metering batches have landed),
its remainder moves to the next month's ledger and is billed with that month's usage. Usage
that still arrives for a closed month (the previous month is always looked at again) is
reported the same way: whole units under that month, the rest carried on.

Exactly once, per (account, month), in the ledger hash ``ledger_key``:

1. Claim (write-ahead): a script records ``pending_value``/``pending_at`` for sequence ``seq``
   only if nothing is pending and ``seq``/``carried_out_micro`` are what this pass read, so
   two reporters cannot claim different amounts under one identifier.
2. Send ``identifier = f"{account_id}:{month}:{seq}"`` with the pending value and timestamp.
   A pending record left by a crash (Stripe accepted, we never recorded) is resent verbatim:
   Stripe deduplicates identifiers, so it counts once. ``BillingUnavailable`` leaves it pending
   and ends the pass (the next pass resends); nothing is lost.
3. Acknowledge: a script adds the value to ``reported_micro`` and advances ``seq`` only if that
   sequence is still the pending one, so a second acknowledgement changes nothing.

Stripe enforces identifier uniqueness over at least 24 hours: a pending event accepted by
Stripe must be resent within that time (the next pass, normally seconds later).

One leader per cluster: a pass holds ``LEADER_KEY`` (SET NX PX, renewed before each account);
a reporter that finds it held returns at once. Steps 1 and 3 keep even overlapping passes (a
lease that expired mid-pass) from billing anything twice.

Events carry the time they were claimed, so usage reported after a Stripe billing period ended
lands in the next period: delayed, never lost."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import redis.asyncio as aioredis

from actors.billing.stripe_api import BillingRejected, BillingUnavailable
from actors.metering.record import current_month
from actors.metering.usage_store import UsageStore
from core.money import MICRO

logger = logging.getLogger("neuroapi.billing")

REPORTED_STATUSES = frozenset({"active", "trialing", "past_due"})
LEADER_KEY = "neuroapi:billing:reporter:leader"
SENT, UNAVAILABLE, REJECTED = "sent", "unavailable", "rejected"
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def ledger_key(account_id: str, month: str) -> str:
    """What was reported for the account's ``month`` (YYYY-MM); no expiry (billing records)."""
    return f"neuroapi:billing:usage_report:{account_id}:{month}"


def cursor_key(account_id: str) -> str:
    """Field ``open_from``: the oldest month that may still owe a report."""
    return f"neuroapi:billing:usage_report:{account_id}"


def identifier(account_id: str, month: str, seq: int) -> str:
    return f"{account_id}:{month}:{seq}"


# What a MeterEvents raises: "not now" leaves the event pending and ends the pass; "never"
# leaves it pending for an operator (it is not dropped: that would lose usage).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (BillingUnavailable,)
REJECTED_ERRORS: tuple[type[BaseException], ...] = (BillingRejected,)


class MeterEvents(Protocol):
    """What the reporter needs of Stripe (``StripeBilling`` is one). A repeated identifier that
    Stripe already accepted must return normally (it is counted once either way)."""

    async def send_meter_event(self, event_name: str, customer_id: str, value: int,
                               identifier: str, timestamp: int) -> None: ...


@dataclass(frozen=True)
class Subscribed:
    """An account with a subscription. ``since_month``: the month it subscribed (earlier months
    are never billed); ``unbilled_micro``: that month's cost when it subscribed (not billed)."""

    account_id: str
    customer_id: str
    status: str
    since_month: str
    unbilled_micro: int = 0


class SubscribedAccounts(Protocol):
    async def subscribed(self) -> list[Subscribed]: ...


@dataclass(frozen=True)
class Sent:
    """One meter event this pass tried: ``outcome`` is "sent" (Stripe has it, counted once),
    "unavailable" (still pending, resent next pass) or "rejected" (still pending; look)."""

    account_id: str
    customer_id: str
    month: str
    identifier: str
    value: int  # whole cost_units
    timestamp: int
    outcome: str = SENT


@dataclass(frozen=True)
class MonthLedger:
    reported_micro: int = 0  # acknowledged values × MICRO
    seq: int = 0  # the next event's sequence number
    carry_in_micro: int = 0
    carried_out_micro: int = 0
    pending_value: int | None = None  # whole cost_units, written before sending
    pending_at: int = 0


def billable_micro(month_cost_micro: int, month: str, account: Subscribed, free_micro: int) -> int:
    """The part of ``month``'s metered cost that is billed."""
    if month < account.since_month:
        return 0
    unbilled = account.unbilled_micro if month == account.since_month else 0
    return max(0, month_cost_micro - max(free_micro, unbilled))


def next_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}"


def previous_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year - 1:04d}-12" if number == 1 else f"{year:04d}-{number - 1:02d}"


def month_start(month: str) -> int:
    return int(datetime(int(month[:4]), int(month[5:7]), 1, tzinfo=UTC).timestamp())


_CLAIM = """
-- KEYS[1] ledger  ARGV[1] seq read  ARGV[2] carried_out read  ARGV[3] value  ARGV[4] timestamp
if redis.call('HEXISTS', KEYS[1], 'pending_value') == 1 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') ~= tonumber(ARGV[1]) then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'carried_out_micro') or '0') ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'pending_value', ARGV[3], 'pending_at', ARGV[4])
return 1
"""

_ACK = """
-- KEYS[1] ledger  ARGV[1] the pending seq  ARGV[2] MICRO
local value = redis.call('HGET', KEYS[1], 'pending_value')
if not value or tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'reported_micro', tonumber(value) * tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HDEL', KEYS[1], 'pending_value', 'pending_at')
return 1
"""

_CARRY = """
-- KEYS[1] ledger  KEYS[2] next month's ledger  ARGV[1] seq read  ARGV[2] carried_out read
-- ARGV[3] the remainder to move
if redis.call('HEXISTS', KEYS[1], 'pending_value') == 1 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') ~= tonumber(ARGV[1]) then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'carried_out_micro') or '0') ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'carried_out_micro', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'carry_in_micro', ARGV[3])
return 1
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_STEPS_PER_MONTH = 4  # a crash's pending event, then new usage: two; the rest is headroom


class UsageReporter:
    def __init__(self, redis: aioredis.Redis, stripe: MeterEvents, event_name: str,
                 free_micro: int, accounts: SubscribedAccounts, *,
                 close_after_s: int = 3600, lock_ms: int = 60_000,
                 clock: Callable[[], float] = time.time, usage: UsageStore | None = None):
        if free_micro < 0 or close_after_s < 0 or lock_ms < 1:
            raise ValueError("free_micro and close_after_s cannot be negative, lock_ms must be positive")
        self._redis = redis
        self._stripe = stripe
        self._event_name = event_name
        self._free_micro = free_micro
        self._accounts = accounts
        self._close_after_s = close_after_s
        self._lock_ms = lock_ms
        self._clock = clock
        self._usage = usage or UsageStore(redis)
        self._claim = redis.register_script(_CLAIM)
        self._ack = redis.register_script(_ACK)
        self._carry = redis.register_script(_CARRY)
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)

    async def report_once(self, now: int | None = None) -> list[Sent]:
        """One pass over the subscribed accounts; [] when another reporter holds the lead.
        Stops at the first BillingUnavailable (the rest wait for the next pass)."""
        now = int(self._clock()) if now is None else now
        token = secrets.token_hex(16)
        if not await self._redis.set(LEADER_KEY, token, nx=True, px=self._lock_ms):
            return []
        sent: list[Sent] = []
        try:
            for account in await self._accounts.subscribed():
                if account.status not in REPORTED_STATUSES or not account.customer_id:
                    continue
                if not await self._extend(keys=[LEADER_KEY], args=[token, self._lock_ms]):
                    logger.warning("billing report: lost the reporter lease; pass ended early")
                    break
                if not await self._report_account(account, now, sent):
                    break
        finally:
            await self._release(keys=[LEADER_KEY], args=[token])
        return sent

    async def ledger(self, account_id: str, month: str) -> MonthLedger:
        stored = await self._redis.hgetall(ledger_key(account_id, month))
        pending = stored.get("pending_value")
        return MonthLedger(
            reported_micro=int(stored.get("reported_micro", 0)), seq=int(stored.get("seq", 0)),
            carry_in_micro=int(stored.get("carry_in_micro", 0)),
            carried_out_micro=int(stored.get("carried_out_micro", 0)),
            pending_value=None if pending is None else int(pending),
            pending_at=int(stored.get("pending_at", 0)),
        )

    async def owed_micro(self, account: Subscribed, month: str) -> int:
        """What ``month`` has not reported yet (a pending event's value included)."""
        return self._owed(account, month, await self.ledger(account.account_id, month),
                          await self._month_cost(account.account_id, month))

    def _owed(self, account: Subscribed, month: str, ledger: MonthLedger, cost: int) -> int:
        return (billable_micro(cost, month, account, self._free_micro) + ledger.carry_in_micro
                - ledger.reported_micro - ledger.carried_out_micro)

    async def _month_cost(self, account_id: str, month: str) -> int:
        return int((await self._usage.month(account_id, month))["cost_micro_units"])

    async def _report_account(self, account: Subscribed, now: int, sent: list[Sent]) -> bool:
        """False when Stripe is unavailable (the pass stops)."""
        if not _MONTH.fullmatch(account.since_month):
            # Without the month it began we cannot tell usage before subscribing from after.
            logger.error("billing report: account %s has no subscription month; skipped", account.account_id)
            return True
        current = current_month(now * 1000)
        cursor = await self._redis.hget(cursor_key(account.account_id), "open_from")
        first = max(account.since_month, min(cursor or account.since_month, previous_month(current)))
        open_from = None
        month = first
        while month <= current:
            outcome = await self._report_month(account, month, now, sent)
            if outcome == UNAVAILABLE:
                return False
            closed = (outcome == SENT and now >= month_start(next_month(month)) + self._close_after_s
                      and await self._carry_remainder(account, month))
            if not closed and open_from is None:
                open_from = month
            month = next_month(month)
        await self._redis.hset(cursor_key(account.account_id), "open_from", open_from or current)
        return True

    async def _report_month(self, account: Subscribed, month: str, now: int, sent: list[Sent]) -> str:
        """Report what ``month`` owes in whole cost_units. "sent" once nothing whole is owed,
        "unavailable"/"rejected" with the event still pending, "busy" after another reporter's
        concurrent steps (the next pass goes on)."""
        key = ledger_key(account.account_id, month)
        for _ in range(_STEPS_PER_MONTH):
            ledger = await self.ledger(account.account_id, month)
            if ledger.pending_value is None:
                cost = await self._month_cost(account.account_id, month)
                units = self._owed(account, month, ledger, cost) // MICRO
                if units <= 0:
                    return SENT
                if not await self._claim(keys=[key], args=[ledger.seq, ledger.carried_out_micro, units, now]):
                    continue  # another reporter moved first: read again
                value, at = units, now
            else:
                value, at = ledger.pending_value, ledger.pending_at  # resend verbatim
            event = Sent(account.account_id, account.customer_id, month,
                         identifier(account.account_id, month, ledger.seq), value, at)
            try:
                await self._stripe.send_meter_event(self._event_name, account.customer_id, value,
                                                    event.identifier, at)
            except UNAVAILABLE_ERRORS:
                logger.warning("billing report: Stripe unavailable; %s stays pending", event.identifier)
                sent.append(_with(event, UNAVAILABLE))
                return UNAVAILABLE
            except REJECTED_ERRORS as error:
                logger.error("billing report: Stripe refused %s (%s); it stays pending",
                             event.identifier, type(error).__name__)
                sent.append(_with(event, REJECTED))
                return REJECTED
            if await self._ack(keys=[key], args=[ledger.seq, MICRO]):
                sent.append(event)
        return "busy"

    async def _carry_remainder(self, account: Subscribed, month: str) -> bool:
        """Move a closed month's sub-unit remainder to the next month; True when nothing is
        left owed in ``month``."""
        ledger = await self.ledger(account.account_id, month)
        owed = self._owed(account, month, ledger, await self._month_cost(account.account_id, month))
        if ledger.pending_value is not None or owed >= MICRO:
            return False  # usage arrived since: the next pass reports it first
        if owed <= 0:
            return True
        return bool(await self._carry(
            keys=[ledger_key(account.account_id, month), ledger_key(account.account_id, next_month(month))],
            args=[ledger.seq, ledger.carried_out_micro, owed]))


def _with(event: Sent, outcome: str) -> Sent:
    return Sent(event.account_id, event.customer_id, event.month, event.identifier, event.value,
                event.timestamp, outcome)

