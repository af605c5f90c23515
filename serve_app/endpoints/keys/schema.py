"""``POST /v1/keys``'s body."""

from __future__ import annotations

from pydantic import Field

from serve_app.endpoints.parsing import Strict


class NewKey(Strict):
    name: str = Field(default="", max_length=100)
