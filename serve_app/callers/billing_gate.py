"""May this account call an inference endpoint? (``actors.billing.gate.allowed``), answered from
this replica's memory on the hot path.

A decision is read from Redis once and kept until the account's billing changes: a webhook's
change is broadcast (topic ``billing``) and every replica drops the account before the webhook
is answered, as with a revoked key. Usage grows between reads: an account on its free allowance
adds the cost of the calls this replica records, and its month's total is read again once it is
``refresh_s`` old (so calls on other replicas count within that bound)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from actors.billing.gate import allowed, payment_required
from actors.billing.store import BillingState, BillingStore
from actors.metering.record import current_month
from actors.metering.usage_store import UsageStore
from core.redis_conn import UNREACHABLE

REFRESH_S = 2.0


@dataclass
class _Entry:
    state: BillingState
    month: str
    cost_micro: int  # the month's metered cost when read, plus this replica's calls since
    read_at: float


class BillingGate:
    def __init__(self, store: BillingStore, usage: UsageStore, free_micro: int, grace_s: int,
                 refresh_s: float = REFRESH_S, max_entries: int = 100_000,
                 cache_usable: Callable[[], bool] = lambda: True):
        """``cache_usable``: whether remembered decisions may still be served while Redis is
        away (the invalidation listener's bound, as for verified keys)."""
        self._store, self._usage = store, usage
        self._free_micro, self._grace_s = free_micro, grace_s
        self._refresh_s, self._max_entries = refresh_s, max_entries
        self._cache_usable = cache_usable
        self._entries: dict[str, _Entry] = {}
        self._generation = 0  # bumped by every invalidation: a read that raced one is not kept

    async def check(self, account_id: str) -> None:
        """Raises the 402 ``payment_required`` error when the account may not call."""
        now = time.time()
        month = current_month(int(now * 1000))
        entry = self._entries.get(account_id)
        # A subscription's decision changes only by webhook (broadcast here) or by its grace
        # running out (computed below); an allowance's changes with usage, so it is read again.
        stale = not (entry and entry.state.subscribed) and (entry is None or now - entry.read_at > self._refresh_s)
        if entry is None or entry.month != month or stale:
            try:
                entry = await self._read(account_id, month, now)
            except UNREACHABLE:
                # Redis away: the last decision stands while verified keys are served from cache.
                if entry is None or entry.month != month or not self._cache_usable():
                    raise
        if not allowed(entry.state, entry.cost_micro, self._free_micro, self._grace_s, int(now)):
            raise payment_required()

    async def _read(self, account_id: str, month: str, now: float) -> _Entry:
        generation = self._generation
        state = await self._store.state(account_id)
        cost = int((await self._usage.month(account_id, month)).get("cost_micro_units", 0))
        entry = _Entry(state, month, cost, now)
        if generation == self._generation:
            if len(self._entries) >= self._max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[account_id] = entry
        return entry

    def spent(self, account_id: str, cost_micro: int) -> None:
        """A call this replica recorded: counted against the allowance before the next read."""
        entry = self._entries.get(account_id)
        if entry is not None:
            entry.cost_micro += cost_micro

    def invalidate(self, account_id: str) -> None:
        self._generation += 1
        self._entries.pop(account_id, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
