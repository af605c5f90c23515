"""The admin fine-tune API's body."""

from __future__ import annotations

from pydantic import Field

from serve_app.endpoints.parsing import Strict


class FineTuneDeploy(Strict):
    """The admin API's deploy: a PEFT folder on the gateway's filesystem (or a shared one)."""

    path: str = Field(min_length=1, max_length=4096)
    base: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=63)
    account: str | None = Field(default=None, max_length=320)
