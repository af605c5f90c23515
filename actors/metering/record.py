"""Metering: one record per call, and the money arithmetic.

A ``CallRecord`` is what we keep about a call (the "Per call" row of the Security & data
page): ids, counts, status, cost. It never holds prompt or completion text, so it may go to
Redis, to a spill file, or to logs of counts without review. The money arithmetic is
``core.money``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Self


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
    endpoint: str = ""  # the path called ("/v1/messages"); "" in records made before it was kept

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
_ADDED_LATER = frozenset({"finetune", "endpoint"})  # absent from spill lines written before they existed


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` when no tokenizer is at hand: one token per 4 bytes of UTF-8, rounded
    up (0 for empty text, at least 1 otherwise). BPE tokenizers average about 4 bytes per token
    on English text; the record is flagged ``estimated`` whenever this is used."""
    return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4  # ceil in integers


def current_month(timestamp_ms: int) -> str:
    """The usage month ("YYYY-MM", UTC) a call at ``timestamp_ms`` counts toward."""
    return datetime.fromtimestamp(timestamp_ms // 1000, tz=UTC).strftime("%Y-%m")
