"""An account's monthly usage as ``GET /v1/usage`` and ``neuroapi usage`` show it.

Counters are kept in micro cost_units (exact integers); shown as ``cost_units`` in exact
decimal text next to the integer, so no client has to trust a float with money."""

from __future__ import annotations

from actors.metering import cost_units_text


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
