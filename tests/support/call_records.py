"""Metering call records for tests: one call's record, every field overridable."""

from __future__ import annotations

import uuid

from actors.metering.record import CallRecord

# 2026-03-15T12:00:00Z
MARCH = 1_773_576_000_000


def record(account_id: str = "acct_1", *, mode: str = "fast", prompt: int = 10, completion: int = 20,
           cost: int = 7, estimated: bool = False, request_id: str | None = None,
           timestamp_ms: int = MARCH, status: int = 200) -> CallRecord:
    return CallRecord(
        request_id=request_id or str(uuid.uuid4()), timestamp_ms=timestamp_ms,
        key_prefix="neuro_abcd1234" if account_id else "", account_id=account_id, status=status,
        mode=mode, backend="openai" if status == 200 else "", model="gpt-4o-mini" if status == 200 else "",
        prompt_tokens=prompt, completion_tokens=completion, estimated=estimated,
        cost_micro_units=cost, request_bytes=100, response_bytes=300)
