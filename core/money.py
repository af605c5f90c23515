"""Money: exact prices and costs, and the JSON that carries them.

Money is integers only. Prices are cost_units per million tokens (``config.catalog.Price``)
and 1 cost_unit = US$0.000001, so a call's cost in micro cost_units is exactly
``uncached_prompt * input + cache_reads * cache_read + cache_writes * cache_write +
completion_tokens * output``: no division, no float. A model without cache prices bills cached
prompt tokens at its input price."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol

MICRO = 1_000_000  # micro cost_units per cost_unit
FINETUNE_PREFIX = "ft:"  # a fine-tune's model name is "ft:NAME"


class Price(Protocol):
    """cost_units per million tokens (``config.catalog.Price`` is one)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None  # a prompt token read from the provider's prompt cache (None: input)
    cache_write: Decimal | None  # a prompt token written to it (Anthropic bills writes above input)


def price_for(prices: Mapping[str, Price], model: str, finetune_price_name: str = "") -> Price | None:
    """The price a call is metered at: a fine-tune's own ("ft:NAME"), else its base model's;
    None for a model without a price (metered at 0)."""
    return (finetune_price_name and prices.get(finetune_price_name)) or prices.get(model)


def cost_micro_units(price: Price, prompt_tokens: int, completion_tokens: int,
                     cached_tokens: int = 0, cache_write_tokens: int = 0) -> int:
    """The cost of a call in micro cost_units, exactly. ``prompt_tokens`` counts every prompt
    token, ``cached_tokens`` (cache reads) and ``cache_write_tokens`` among them.

    With whole-number prices (all the shipped ones) this is an exact integer product. A price
    with a fraction (``Price`` accepts decimals such as 0.5) makes the product fractional; it
    is computed exactly as a ``Fraction`` and rounded half up to a whole micro cost_unit, once
    per call."""
    if min(prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens) < 0:
        raise ValueError("token counts cannot be negative")
    uncached = prompt_tokens - cached_tokens - cache_write_tokens
    if uncached < 0:
        raise ValueError("cached tokens are part of the prompt tokens, never more")
    read = price.cache_read if price.cache_read is not None else price.input
    write = price.cache_write if price.cache_write is not None else price.input
    total = (Fraction(price.input) * uncached + Fraction(read) * cached_tokens
             + Fraction(write) * cache_write_tokens + Fraction(price.output) * completion_tokens)
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


_COST_PLACEHOLDER = "\x00cost_units\x00"


def priced_json(payload: dict[str, Any], cost_units: str) -> bytes:
    """``payload`` as JSON with ``usage.cost_units`` set to the exact decimal ``cost_units``
    (a JSON number written from its text: no float ever holds money)."""
    usage = payload.setdefault("usage", {})
    usage["cost_units"] = _COST_PLACEHOLDER
    return json_bytes(payload).replace(json.dumps(_COST_PLACEHOLDER).encode(), cost_units.encode())


def json_bytes(payload: Any) -> bytes:
    """JSON in UTF-8 as is (not \\u escapes, up to 6 bytes a character), so an answer keeps the
    size the provider sent; a lone surrogate (only ever inside a JSON string) stays escaped."""
    return json.dumps(payload, ensure_ascii=False).encode("utf-8", "backslashreplace")
