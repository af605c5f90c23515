"""An account's monthly usage as ``GET /v1/usage`` and ``neuroapi usage`` show it.

Counters are kept in micro cost_units (exact integers); shown as ``cost_units`` in exact
decimal text next to the integer, so no client has to trust a float with money."""

from __future__ import annotations

import time

from actors.metering.record import current_month
from actors.metering.usage_store import UsageStore
from core.money import cost_units_text


def previous_month(month: str) -> str:
    year, number = map(int, month.split("-"))
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"


def _counters(counters: dict) -> dict:
    shown = {name: value for name, value in counters.items() if name != "by_mode"}
    shown["cost_units"] = cost_units_text(int(counters.get("cost_micro_units", 0)))
    return shown


def usage_view(month: str, counters: dict) -> dict:
    """One month: totals, and the same counters per mode ("(model)" for calls naming a model)."""
    return {"month": month, **_counters(counters),
            "by_mode": {mode: _counters(values) for mode, values in sorted(counters.get("by_mode", {}).items())}}


async def usage_document(store: UsageStore, account_id: str, months: list[str] | None = None) -> dict:
    """The whole answer: the given months, or this month and the one before (UTC)."""
    if months is None:
        current = current_month(int(time.time() * 1000))
        months = [current, previous_month(current)]
    return {"object": "usage", "account_id": account_id,
            "data": [usage_view(month, await store.month(account_id, month)) for month in months]}
