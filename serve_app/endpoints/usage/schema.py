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


class Budget(BaseModel):
    monthly_budget_cost_units: str | None = Field(description="The monthly budget; null: none.")
    spent_cost_units: str = Field(description="Spent this month by calls held to the budget.")
    reserved_cost_units: str = Field(description="Held by calls in flight (their worst case, until they end).")
    left_cost_units: str | None = Field(description="What a new call may still reserve; null without a budget.")


class KeyBudget(Budget):
    prefix: str
    rpm: int | None
    tpm: int | None
    models: list[str] | None = Field(description="The models and modes the key may call; null: any.")


class Budgets(BaseModel):
    month: str
    account: Budget
    key: KeyBudget | None = Field(default=None, description="With an API key: that key's limits.")


class UsageDocument(BaseModel):
    object: Literal["usage"]
    account_id: str
    data: list[UsageMonth] = Field(description="This month and the one before.")
    budgets: Budgets = Field(description="This month's budgets and what is left (limits set by the operator or "
                                         "the account's owner).")
