"""``DELETE /v1/account``'s body: the password again, so a stolen session alone cannot delete; and
the account endpoints' answers, for the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from serve_app.endpoints.parsing import Strict


class AccountDeletion(Strict):
    password: str = Field(min_length=1, max_length=1024)


# Answers, for the OpenAPI document.

class AccountExport(BaseModel):
    """Everything NeuroAPI holds about the account (never prompts or completions: none are kept)."""

    object: Literal["account_export"]
    exported_at: int
    account: dict[str, Any]
    keys: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    scope: dict[str, Any]
    billing: dict[str, Any] | None
    usage: dict[str, Any] = Field(description="Counters by month (YYYY-MM).")
    calls: list[dict[str, Any]] = Field(description="Per-call records: ids, counts and costs, never content.")
    audit: list[dict[str, Any]]
    finetunes: list[dict[str, Any]]


class AccountDeleted(BaseModel):
    object: Literal["account"]
    id: str
    deleted: bool
    purge: str
