"""``POST /v1/keys``'s body, and the key endpoints' answers (for the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.endpoints.parsing import Strict


class NewKey(Strict):
    name: str = Field(default="", max_length=100)


class KeyLimitsChange(Strict):
    """``PATCH /v1/keys/{prefix}``: the limits to change; a field left out is kept, null clears
    it. Never above the operator's limits for the key (403)."""

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, description="Prompt + completion tokens per minute.")
    monthly_budget_cost_units: str | int | None = Field(
        default=None, max_length=40, description="The key's budget per UTC month, in cost_units (exact decimal text).")
    models: list[str] | None = Field(default=None, min_length=1, max_length=64,
                                     description="The only models/modes (or ft: names) the key may call.")

    def changes(self) -> dict:
        return {name: getattr(self, name) for name in self.model_fields_set}


class KeyLimitsInfo(BaseModel):
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget_cost_units: str | None = None
    models: list[str] | None = None


class InForceLimits(KeyLimitsInfo):
    account_monthly_budget_cost_units: str | None = Field(
        default=None, description="The account's budget per UTC month, across all its keys.")


# Answers, for the OpenAPI document (``router.key_fields``: never the secret or its hash).

class ApiKeyInfo(BaseModel):
    object: Literal["api_key"]
    prefix: str = Field(description="The key's public prefix: how it is named for listing and revoking.")
    name: str
    status: str = Field(description="active or revoked.")
    created_at: int
    last_used_at: int | None = None
    limits: InForceLimits | None = Field(default=None, description=(
        "What the key's calls are held to: the owner's and the operator's limits, the tighter of each."))
    operator_limits: KeyLimitsInfo | None = Field(default=None, description=(
        "The operator's limits for the key: the owner may set its own only under them."))


class NewApiKey(ApiKeyInfo):
    key: str = Field(description="The whole key (`neuro_...`), shown this once only.")


class ApiKeyList(BaseModel):
    object: Literal["list"]
    data: list[ApiKeyInfo]


class RevokedKey(BaseModel):
    object: Literal["api_key"]
    prefix: str
    status: Literal["revoked"]
