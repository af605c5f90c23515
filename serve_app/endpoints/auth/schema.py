"""Sign-up and log-in bodies."""

from __future__ import annotations

from pydantic import Field

from serve_app.endpoints.parsing import Strict


class Credentials(Strict):
    """Sign-up and log-in body. Password rules are checked by ``actors.accounts.passwords``."""

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)
