"""The admin limits API's bodies and answers (issue 19)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.endpoints.admin_scopes.schema import AccountRef
from serve_app.endpoints.keys.schema import InForceLimits, KeyLimitsInfo
from serve_app.endpoints.parsing import Strict

_BUDGET = "Per UTC month, in cost_units (exact decimal text or a whole number); null: no budget."


class KeyLimitsSet(Strict):
    """``PUT /v1/admin/key-limits``: the key (by prefix, in the body) and all its new operator
    limits (a field left out or null: no operator limit on it)."""

    prefix: str = Field(min_length=1, max_length=32)
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, description="Prompt + completion tokens per minute.")
    monthly_budget_cost_units: str | int | None = Field(default=None, description=_BUDGET)
    models: list[str] | None = Field(default=None, min_length=1, max_length=64,
                                     description="The only models/modes (or ft: names) the key may call.")

    def changes(self) -> dict:
        return {"rpm": self.rpm, "tpm": self.tpm, "monthly_budget_cost_units": self.monthly_budget_cost_units,
                "models": self.models}


class AccountBudgetSet(AccountRef):
    """``PUT /v1/admin/account-budget``: the account's monthly budget across all its keys."""

    monthly_budget_cost_units: str | int | None = Field(description=_BUDGET)


# Answers, for the OpenAPI document.

class KeyLimitsAnswer(BaseModel):
    object: Literal["key_limits"]
    prefix: str
    account_id: str
    operator_limits: KeyLimitsInfo
    limits: InForceLimits = Field(description="What the key's calls are held to now (owner's and operator's).")
    replicas_confirmed: int = Field(description="Ingress replicas that confirmed before the answer.")


class AccountBudgetAnswer(BaseModel):
    object: Literal["account_budget"]
    account_id: str
    monthly_budget_cost_units: str | None
    replicas_confirmed: int = Field(description="Ingress replicas that confirmed before the answer.")
