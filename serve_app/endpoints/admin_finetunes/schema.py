"""The admin fine-tune API's body and answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.endpoints.parsing import Strict


class FineTuneDeploy(Strict):
    """The admin API's deploy: a PEFT folder on the gateway's filesystem (or a shared one)."""

    path: str = Field(min_length=1, max_length=4096)
    base: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=63)
    account: str | None = Field(default=None, max_length=320)


# Answers, for the OpenAPI document (``router.finetune_fields``).

class FineTune(BaseModel):
    object: Literal["finetune"]
    name: str
    version: int
    state: Literal["staged", "live", "retired"]
    base_model: str
    model: str = Field(description="What callers send as `model`: ft:NAME.")
    digest: str
    rank: int
    owner_account: str | None = Field(description="The only account that may use it; null: every account that "
                                                  "may use the base model.")
    deployed_by: str
    deployed_at_ms: int


class RetiredFineTune(BaseModel):
    object: Literal["finetune"]
    name: str
    state: Literal["retired"]


class FineTuneList(BaseModel):
    object: Literal["list"]
    data: list[FineTune | RetiredFineTune]


class FineTuneVersions(BaseModel):
    object: Literal["list"]
    data: list[FineTune]
