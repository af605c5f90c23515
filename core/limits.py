"""A key's limits (issue 19) and the rate-limit headers of its answers: the values every layer
shares. ``actors.limits.store`` enforces them in Redis; the key records and ``GET /v1/keys``
carry ``Limits.as_dict()``.

Budgets are exact integers in micro cost_units (``core.money``: 1 cost_unit = 1_000_000 micro),
shown and accepted as cost_units decimal text ("12.5"), never as a float."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from core.money import MICRO, cost_units_text

# Redis counts money with its 64-bit integer commands; a budget must fit with room to add to it.
MAX_MICRO = 2**62
MAX_RATE = 2**50  # requests or tokens per minute: far past any real limit, exact in a Lua double


class LimitsError(ValueError):
    """A limit that cannot be set (the message names the field, never a secret)."""


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None  # requests per minute, per key
    tpm: int | None = None  # prompt + completion tokens per minute, per key
    key_budget_micro: int | None = None  # the key's monthly budget (UTC month), micro cost_units
    account_budget_micro: int | None = None  # its account's monthly budget, across all its keys
    models: frozenset[str] | None = None  # the models/modes the key may call; None = any

    def __post_init__(self) -> None:
        for name, low, high in (("rpm", 1, MAX_RATE), ("tpm", 1, MAX_RATE),
                                ("key_budget_micro", 0, MAX_MICRO),
                                ("account_budget_micro", 0, MAX_MICRO)):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not low <= value <= high):
                raise LimitsError(f"{name} must be a whole number from {low} to {high}")
        if self.models is not None:
            if not isinstance(self.models, frozenset) or not self.models:
                raise LimitsError("models must be a non-empty set of names (None allows any)")
            if not all(isinstance(m, str) and m for m in self.models):
                raise LimitsError("models must be non-empty names")

    def counted(self) -> bool:
        """Whether a call must reserve in Redis (a key with only an allow-list costs no round trip)."""
        return any(v is not None for v in (self.rpm, self.tpm, self.key_budget_micro,
                                           self.account_budget_micro))

    def budgeted(self) -> bool:
        return self.key_budget_micro is not None or self.account_budget_micro is not None

    def allows_model(self, name: str) -> bool:
        return self.models is None or name in self.models

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, every field present (None when unset); budgets as cost_units text."""
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "monthly_budget_cost_units": _text(self.key_budget_micro),
            "account_monthly_budget_cost_units": _text(self.account_budget_micro),
            "models": sorted(self.models) if self.models is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        """The inverse of ``as_dict``; a missing field or None is unset. Budgets may be cost_units
        text or a whole JSON number (a float is refused: it cannot carry money exactly)."""
        models = data.get("models")
        if models is not None:
            if isinstance(models, str) or not hasattr(models, "__iter__"):
                raise LimitsError("models must be a list of names")
            models = frozenset(models)
        return cls(
            rpm=data.get("rpm"),
            tpm=data.get("tpm"),
            key_budget_micro=micro_from_cost_units(data.get("monthly_budget_cost_units"),
                                                   "monthly_budget_cost_units"),
            account_budget_micro=micro_from_cost_units(
                data.get("account_monthly_budget_cost_units"), "account_monthly_budget_cost_units"),
            models=models,
        )


def _text(micro: int | None) -> str | None:
    return None if micro is None else cost_units_text(micro)


def micro_from_cost_units(value: Any, field: str = "budget") -> int | None:
    """cost_units ("12.5", "3", 3) -> exact micro cost_units; None stays None. At most six
    decimals (a micro cost_unit is the smallest amount)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LimitsError(f"{field} must be cost_units as text or a whole number")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise LimitsError(f"{field} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise LimitsError(f"{field} must be zero or more")
    micro = amount * MICRO
    if micro != micro.to_integral_value():
        raise LimitsError(f"{field} has more than six decimals")
    if micro > MAX_MICRO:
        raise LimitsError(f"{field} is too large")
    return int(micro)


def duration_text(ms: int) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-* (Go's style): "0s", "120ms",
    "1s", "8.64s", "6m0s", "1h2m3s"."""
    ms = max(int(ms), 0)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """OpenAI's x-ratelimit-* values for one answer of a limited key. ``*_reset_ms``: until the
    window holds nothing of the key (OpenAI: "resets to its initial state")."""

    request_limit: int | None = None
    requests_remaining: int = 0
    requests_reset_ms: int = 0
    token_limit: int | None = None
    tokens_remaining: int = 0
    tokens_reset_ms: int = 0

    def as_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.request_limit is not None:
            headers["x-ratelimit-limit-requests"] = str(self.request_limit)
            headers["x-ratelimit-remaining-requests"] = str(max(self.requests_remaining, 0))
            headers["x-ratelimit-reset-requests"] = duration_text(self.requests_reset_ms)
        if self.token_limit is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.token_limit)
            headers["x-ratelimit-remaining-tokens"] = str(max(self.tokens_remaining, 0))
            headers["x-ratelimit-reset-tokens"] = duration_text(self.tokens_reset_ms)
        return headers


def retry_after_text(seconds: float) -> str:
    """The Retry-After header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
