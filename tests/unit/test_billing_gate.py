"""The gating decision, every branch, and the 402 a refused caller reads."""

from __future__ import annotations

import json

import pytest

from actors.billing.gate import allowed, payment_required
from actors.billing.store import BillingState

FREE = 5_000_000  # 5 cost_units
GRACE = 3 * 86400
NOW = 1_773_000_000


def state(status: str, since: int = NOW - 10) -> BillingState:
    return BillingState(customer_id="cus_A", subscription_id="sub_1", status=status,
                        status_at=since, status_since=since)


@pytest.mark.parametrize("status", ["active", "trialing"])
def test_a_paying_subscription_is_allowed_whatever_it_used(status):
    assert allowed(state(status), 10**15, FREE, GRACE, NOW)
    assert allowed(state(status), 10**15, 0, 0, NOW)


@pytest.mark.parametrize("status", ["none", "canceled", "unpaid", "incomplete", "incomplete_expired", "paused"])
def test_without_a_subscription_only_the_free_allowance_is_allowed(status):
    assert allowed(state(status), 0, FREE, GRACE, NOW)
    assert allowed(state(status), FREE - 1, FREE, GRACE, NOW)
    assert not allowed(state(status), FREE, FREE, GRACE, NOW)  # used up exactly: no more
    assert not allowed(state(status), FREE + 1, FREE, GRACE, NOW)
    assert not allowed(state(status), 0, 0, GRACE, NOW)  # no free allowance at all


def test_past_due_is_allowed_for_the_grace_period_only():
    since = NOW - 1000
    over = FREE * 10
    assert allowed(state("past_due", since), over, FREE, GRACE, since)  # the moment it became past_due
    assert allowed(state("past_due", since), over, FREE, GRACE, since + GRACE - 1)
    assert not allowed(state("past_due", since), over, FREE, GRACE, since + GRACE)  # grace over
    assert not allowed(state("past_due", since), over, FREE, 0, since)  # no grace configured
    # After the grace, past_due is like no subscription: still free while under the allowance.
    assert allowed(state("past_due", since), FREE - 1, FREE, GRACE, since + GRACE)


def test_the_grace_counts_from_when_past_due_began_not_the_latest_event():
    s = BillingState(status="past_due", status_at=NOW, status_since=NOW - GRACE)
    assert not allowed(s, FREE, FREE, GRACE, NOW)


def test_payment_required_says_how_to_subscribe():
    error = payment_required()
    assert error.status == 402
    body = json.loads(error.rendered())["error"]
    assert body["code"] == "payment_required" and body["type"] == "insufficient_quota"
    assert "POST /v1/billing/checkout" in body["message"] and "session token" in body["message"]
