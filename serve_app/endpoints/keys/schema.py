"""``POST /v1/keys``'s body, and the key endpoints' answers (for the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.endpoints.parsing import Strict


class NewKey(Strict):
    name: str = Field(default="", max_length=100)


# Answers, for the OpenAPI document (``router.key_fields``: never the secret or its hash).

class ApiKeyInfo(BaseModel):
    object: Literal["api_key"]
    prefix: str = Field(description="The key's public prefix: how it is named for listing and revoking.")
    name: str
    status: str = Field(description="active or revoked.")
    created_at: int
    last_used_at: int | None = None


class NewApiKey(ApiKeyInfo):
    key: str = Field(description="The whole key (`neuro_...`), shown this once only.")


class ApiKeyList(BaseModel):
    object: Literal["list"]
    data: list[ApiKeyInfo]


class RevokedKey(BaseModel):
    object: Literal["api_key"]
    prefix: str
    status: Literal["revoked"]
