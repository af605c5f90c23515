"""``DELETE /v1/account``'s body: the password again, so a stolen session alone cannot delete."""

from __future__ import annotations

from pydantic import Field

from serve_app.endpoints.parsing import Strict


class AccountDeletion(Strict):
    password: str = Field(min_length=1, max_length=1024)
