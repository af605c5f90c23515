"""Metering: one record per call, and the money arithmetic.

A ``CallRecord`` is what we keep about a call (the "Per call" row of the Security & data
page): ids, counts, status, cost. It never holds prompt or completion text, so it may go to
Redis, to a spill file, or to logs of counts without review.

Money is integers only. Prices are cost_units per million tokens (``config.catalog.Price``)
and 1 cost_unit = US$0.000001, so a call's cost in micro cost_units is exactly
``prompt_tokens * input + completion_tokens * output``: no division, no float."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Self

from config.catalog import Price

MICRO = 1_000_000  # micro cost_units per cost_unit


@dataclass(frozen=True, slots=True)
class CallRecord:
    request_id: str
    timestamp_ms: int
    key_prefix: str  # "" when the call was rejected before a key was known
    account_id: str  # "" likewise
    status: int  # the HTTP status the caller got
    mode: str  # "" when the caller named a model
    backend: str  # provider name, "" when no upstream was tried
    model: str  # concrete model, "" when none
    prompt_tokens: int
    completion_tokens: int
    estimated: bool  # token counts estimated (upstream gave none / client left mid-stream)
    cost_micro_units: int  # cost_units * 1_000_000, exact integer
    request_bytes: int
    response_bytes: int
    finetune: str = ""  # "<name>@v<version>" when a fine-tune answered (model is then "ft:<name>")

    def to_fields(self) -> dict[str, str]:
        """The Redis stream entry (and spill line): every field as text."""
        out: dict[str, str] = {}
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            out[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out

    @classmethod
    def from_fields(cls, entry: Mapping[Any, Any]) -> Self:
        """Inverse of ``to_fields``; raises ``ValueError`` (or ``KeyError``) on a bad entry."""
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        values: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            raw = entry.get(name, "") if name in _ADDED_LATER else entry[name]
            raw = raw.decode() if isinstance(raw, bytes) else str(raw)
            if name == "estimated":
                if raw not in ("0", "1"):
                    raise ValueError(f"estimated: {raw!r} is not 0 or 1")
                values[name] = raw == "1"
            elif name in _INT_FIELDS:
                values[name] = int(raw)
            else:
                values[name] = raw
        return cls(**values)


_FIELD_NAMES = tuple(f.name for f in fields(CallRecord))
_INT_FIELDS = frozenset(f.name for f in fields(CallRecord) if f.type == "int")
_ADDED_LATER = frozenset({"finetune"})  # absent from spill lines written before it existed


def cost_micro_units(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """The cost of a call in micro cost_units, exactly.

    With whole-number prices (all the shipped ones) this is an exact integer product. A price
    with a fraction (``Price`` accepts decimals such as 0.5) makes the product fractional; it
    is computed exactly as a ``Fraction`` and rounded half up to a whole micro cost_unit, once
    per call."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("token counts cannot be negative")
    total = Fraction(price.input) * prompt_tokens + Fraction(price.output) * completion_tokens
    if total.denominator == 1:
        return total.numerator
    # Round half up on a non-negative exact fraction: floor(total + 1/2), in integers.
    return (2 * total.numerator + total.denominator) // (2 * total.denominator)


def cost_units_text(micro: int) -> str:
    """``micro / 1_000_000`` as exact decimal text without trailing zeros: 1500000 -> "1.5",
    3 -> "0.000003", 0 -> "0"."""
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO)
    decimals = f"{fraction:06d}".rstrip("0")
    return f"{sign}{whole}.{decimals}" if decimals else f"{sign}{whole}"


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` when no tokenizer is at hand: one token per 4 bytes of UTF-8, rounded
    up (0 for empty text, at least 1 otherwise). BPE tokenizers average about 4 bytes per token
    on English text; the record is flagged ``estimated`` whenever this is used."""
    return estimate_tokens_for_bytes(len(text.encode("utf-8", "surrogatepass")))


def estimate_tokens_for_bytes(utf8_bytes: int) -> int:
    """The same heuristic from a byte count, for callers that counted bytes, not text."""
    return (max(utf8_bytes, 0) + 3) // 4  # ceil in integers


def current_month(timestamp_ms: int) -> str:
    """The usage month ("YYYY-MM", UTC) a call at ``timestamp_ms`` counts toward."""
    return datetime.fromtimestamp(timestamp_ms // 1000, tz=UTC).strftime("%Y-%m")
