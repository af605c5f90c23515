"""``GET /healthz``'s answer, for the OpenAPI document."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Health(BaseModel):
    status: Literal["ok"]
