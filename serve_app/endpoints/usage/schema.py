"""``GET /v1/usage``'s answer, for the OpenAPI document (``actors.metering.usage_report`` builds it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class UsageCounters(BaseModel):
    requests: int
    cost_micro_units: int
    cost_units: str = Field(description="The same cost as exact decimal text (1 cost_unit = US$0.000001).")
    prompt_tokens: int
    completion_tokens: int
    request_bytes: int
    response_bytes: int
    estimated_requests: int = Field(description="Calls whose token counts were estimated (the upstream sent none).")


class UsageMonth(UsageCounters):
    month: str = Field(description="YYYY-MM, UTC.")
    by_mode: dict[str, UsageCounters] = Field(description="The same counters per mode; \"(model)\" for calls "
                                                          "that named a model.")


class UsageDocument(BaseModel):
    object: Literal["usage"]
    account_id: str
    data: list[UsageMonth] = Field(description="This month and the one before.")
