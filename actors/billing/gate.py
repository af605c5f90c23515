"""Whether an account may make billable calls: a pure decision, cheap enough for the hot path
once its inputs are cached."""

from __future__ import annotations

from actors.billing.store import BillingState
from core.errors import GatewayError


def allowed(state: BillingState, month_cost_micro: int, free_micro: int, grace_s: int, now: int) -> bool:
    """``active``/``trialing``: yes. ``past_due``: yes for ``grace_s`` seconds after it became
    past_due (``status_since``; at exactly ``status_since + grace_s`` the grace is over). Anything
    else: only while this month's cost is below the free allowance."""
    if state.status in ("active", "trialing"):
        return True
    if state.status == "past_due" and now - state.status_since < grace_s:
        return True
    return month_cost_micro < free_micro


def payment_required() -> GatewayError:
    """402 in the OpenAI error shape; ``insufficient_quota`` is the type OpenAI gives billing
    refusals (there with 429), so OpenAI clients read it as "fix billing", not "retry"."""
    return GatewayError(
        402,
        "This account has used its free allowance for the month and has no active subscription. "
        "To subscribe, log in (POST /v1/auth/login), then POST /v1/billing/checkout with "
        "'Authorization: Bearer <session token>' and open the returned URL. GET /v1/billing "
        "shows your plan and usage.",
        type="insufficient_quota",
        code="payment_required",
    )
