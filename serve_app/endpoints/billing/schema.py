"""``/v1/billing``'s answers, for the OpenAPI document (``actors.billing.service`` builds them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class BillingPeriod(BaseModel):
    start: int = Field(description="Unix seconds; 0 when there is no subscription.")
    end: int


class BillingOverview(BaseModel):
    """With billing off, only ``object``, ``enabled`` (false) and ``account_id``."""

    object: Literal["billing"]
    enabled: bool
    account_id: str
    status: str | None = Field(default=None, description="The subscription's status (none, active, past_due, ...).")
    subscribed: bool | None = None
    current_period: BillingPeriod | None = None
    month: str | None = None
    cost_units: str | None = Field(default=None, description="This month's cost, exact decimal text.")
    free_cost_units: str | None = None
    free_cost_units_left: str | None = None
    may_call: bool | None = None


class BillingRedirect(BaseModel):
    object: Literal["billing.checkout", "billing.portal"]
    url: str = Field(description="Stripe's page to send the account holder to.")


class WebhookReceived(BaseModel):
    received: bool
