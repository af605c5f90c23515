"""Sign-up and log-in bodies, and the answers of ``/v1/auth/*`` (for the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.endpoints.parsing import Strict


class Credentials(Strict):
    """Sign-up and log-in body. Password rules are checked by ``actors.accounts.passwords``."""

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


# Answers, for the OpenAPI document.

class AccountCreated(BaseModel):
    object: Literal["account"]
    id: str
    email: str
    created_at: int


class SessionToken(BaseModel):
    token: str = Field(description="Send as `Authorization: Bearer <token>` to the account endpoints.")
    token_type: Literal["bearer"]
    expires_at: int = Field(description="Unix seconds.")


class LoggedOut(BaseModel):
    logged_out: bool
