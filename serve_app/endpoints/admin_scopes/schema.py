"""The admin scope API's bodies and answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.endpoints.parsing import Strict


class ScopeChange(Strict):
    """The admin API's account scope: in-house models only, and/or excluded providers."""

    in_house_only: bool = False
    excluded_providers: list[str] = Field(default_factory=list, max_length=64)


class AccountRef(Strict):
    """Which account an admin call is about: in the body, never the URL (access logs keep paths)."""

    email: str = Field(min_length=3, max_length=320)


class AccountScopeChange(ScopeChange, AccountRef):
    """``PUT /v1/admin/account-scope``: the account and its whole new scope."""


# Answers, for the OpenAPI document.

class AccountScope(BaseModel):
    object: Literal["account_scope"]
    account_id: str
    in_house_only: bool
    excluded_providers: list[str]


class AccountScopeSet(AccountScope):
    replicas_confirmed: int = Field(description="Ingress replicas that confirmed the new scope before the answer.")
