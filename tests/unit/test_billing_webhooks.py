"""Stripe webhooks against a real redis-server: the signature (computed here the way Stripe
does: ``t=<unix>,v1=HMAC-SHA256(secret, "<t>.<body>")``), each event applied once, and no
status rolled back by late or out-of-order deliveries. Event, subscription, invoice and
checkout.session bodies follow Stripe's API reference (2025-03-31.basil and later: periods on
subscription items, an invoice's subscription under ``parent.subscription_details``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from actors.accounts.store import account_usage_key
from actors.billing.store import BillingStore, event_key
from actors.billing.webhooks import InvalidWebhook, apply, verify
from actors.metering.record import current_month
from actors.accounts.sealing import AccountSealer
from tests.support.key_material import ACCOUNTS_MATERIAL, account_store

SEALER = AccountSealer(ACCOUNTS_MATERIAL)  # the Stripe ids are sealed (the verifier pool applies webhooks)

SECRET = "whsec_test_" + "a" * 24
NOW = 1_773_000_000  # 2026-03-08 UTC
MONTH = current_month(NOW * 1000)


def sign(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def event(event_id: str, kind: str, obj: dict, created: int) -> dict:
    return {"id": event_id, "object": "event", "api_version": "2025-03-31.basil", "created": created,
            "type": kind, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "data": {"object": obj}}


def subscription(sub_id: str, status: str, customer: str = "cus_A",
                 start: int = NOW - 86400, end: int = NOW + 29 * 86400) -> dict:
    return {"id": sub_id, "object": "subscription", "customer": customer, "status": status,
            "created": NOW - 86400, "cancel_at_period_end": False,
            "items": {"object": "list", "data": [{
                "id": "si_" + sub_id, "object": "subscription_item", "subscription": sub_id,
                "current_period_start": start, "current_period_end": end,
                "price": {"id": "price_metered", "object": "price",
                          "recurring": {"interval": "month", "usage_type": "metered"}}}]}}


def invoice(sub_id: str, customer: str = "cus_A", legacy: bool = False) -> dict:
    body = {"id": "in_" + sub_id, "object": "invoice", "customer": customer, "status": "open",
            "billing_reason": "subscription_cycle"}
    if legacy:  # before 2025-03-31.basil
        body["subscription"] = sub_id
    else:
        body["parent"] = {"type": "subscription_details", "quote_details": None,
                          "subscription_details": {"metadata": {}, "subscription": sub_id}}
    return body


def checkout(sub_id: str, customer: str = "cus_A") -> dict:
    return {"id": "cs_test_1", "object": "checkout.session", "mode": "subscription", "status": "complete",
            "payment_status": "paid", "customer": customer, "subscription": sub_id, "url": None}


@pytest.fixture
async def account(redis) -> str:
    account_id = (await account_store(redis).create("payer@example.com")).id
    await BillingStore(redis, SEALER).set_customer(account_id, "cus_A")
    return account_id


async def deliver(redis, body: dict, header: str | None = None, secret: str = SECRET):
    """What the webhook endpoint does: verify the raw body, then apply it."""
    payload = json.dumps(body).encode()
    verified = verify(payload, sign(payload) if header is None else header, secret)
    return await apply(BillingStore(redis, SEALER), redis, verified, now=NOW)


async def status(redis, account_id: str) -> str:
    return (await BillingStore(redis, SEALER).state(account_id)).status


# ---- signature --------------------------------------------------------------------------------

async def test_a_validly_signed_event_is_verified_and_applied(redis, account):
    body = event("evt_ok", "customer.subscription.created", subscription("sub_1", "active"), NOW)
    payload = json.dumps(body).encode()
    assert verify(payload, sign(payload), SECRET) == body
    assert await deliver(redis, body) == account  # the status changed: the caller broadcasts
    state = await BillingStore(redis, SEALER).state(account)
    assert (state.status, state.subscription_id, state.status_at) == ("active", "sub_1", NOW)
    assert (state.period_start, state.period_end) == (NOW - 86400, NOW + 29 * 86400)  # from its item


async def test_just_inside_the_tolerance_is_accepted(redis, account):
    body = event("evt_edge", "customer.subscription.created", subscription("sub_1", "active"), NOW)
    payload = json.dumps(body).encode()
    verify(payload, sign(payload, timestamp=int(time.time()) - 290), SECRET)


@pytest.mark.parametrize("why", ["wrong secret", "tampered body", "stale", "no header", "garbage header",
                                 "other scheme only"])
async def test_bad_or_stale_signatures_are_rejected_and_change_nothing(redis, account, why):
    body = event("evt_bad", "customer.subscription.created", subscription("sub_1", "active"), NOW)
    payload = json.dumps(body).encode()
    header = {
        "wrong secret": sign(payload, secret="whsec_someone_else"),
        "tampered body": sign(payload.replace(b"active", b"trialing")),
        "stale": sign(payload, timestamp=int(time.time()) - 301),  # past the 5-minute tolerance
        "no header": "",
        "garbage header": "v1=abc,nonsense",
        "other scheme only": sign(payload).replace("v1=", "v0="),
    }[why]
    with pytest.raises(InvalidWebhook) as raised:
        await deliver(redis, body, header)
    assert SECRET not in str(raised.value) and "sub_1" not in str(raised.value)  # no secret, no body
    assert await status(redis, account) == "none"
    assert not await redis.exists(event_key("evt_bad"))


async def test_a_signed_body_that_is_not_an_event_is_rejected():
    for payload in (b"not json", b"[1, 2]", json.dumps({"object": "customer", "id": "cus_A"}).encode()):
        with pytest.raises(InvalidWebhook):
            verify(payload, sign(payload), SECRET)


# ---- exactly once -----------------------------------------------------------------------------

async def test_a_duplicate_delivery_is_applied_once(redis, account):
    await deliver(redis, event("evt_sub", "customer.subscription.created", subscription("sub_1", "active"), NOW))
    past_due = event("evt_failed", "invoice.payment_failed", invoice("sub_1"), NOW + 10)
    assert await deliver(redis, past_due) == account
    # Paid in the same second: equal versions apply in delivery order.
    assert await deliver(redis, event("evt_paid", "invoice.paid", invoice("sub_1"), NOW + 10)) == account
    assert await status(redis, account) == "active"
    # Stripe redelivers the failure: applied a second time it would make the account past_due.
    assert await deliver(redis, past_due) is None
    assert await status(redis, account) == "active"


async def test_an_event_for_an_unknown_customer_is_not_marked_so_a_redelivery_applies(redis):
    account_id = (await account_store(redis).create("late@example.com")).id
    body = event("evt_early", "customer.subscription.created",
                 subscription("sub_9", "active", customer="cus_late"), NOW)
    assert await deliver(redis, body) is None
    assert not await redis.exists(event_key("evt_early"))
    await BillingStore(redis, SEALER).set_customer(account_id, "cus_late")
    assert await deliver(redis, body) == account_id
    assert await status(redis, account_id) == "active"


async def test_unhandled_event_types_change_nothing(redis, account):
    body = event("evt_other", "customer.updated", {"id": "cus_A", "object": "customer", "customer": "cus_A"}, NOW)
    assert await deliver(redis, body) is None
    assert await status(redis, account) == "none"


# ---- order ------------------------------------------------------------------------------------

async def test_an_older_active_event_never_rolls_a_cancellation_back(redis, account):
    canceled = event("evt_2", "customer.subscription.updated", subscription("sub_1", "canceled"), NOW + 100)
    active = event("evt_1", "customer.subscription.updated", subscription("sub_1", "active"), NOW)
    assert await deliver(redis, canceled) == account
    assert await deliver(redis, active) is None  # created earlier, delivered later
    state = await BillingStore(redis, SEALER).state(account)
    assert (state.status, state.status_at) == ("canceled", NOW + 100)


async def test_a_canceled_subscription_is_never_revived_by_a_late_event(redis, account):
    await deliver(redis, event("evt_del", "customer.subscription.deleted", subscription("sub_1", "canceled"), NOW))
    # Even stamped later (same second ties, clock skew between Stripe's writers): an ended
    # subscription id cannot become active again in Stripe, so this is stale data.
    late = event("evt_late", "customer.subscription.updated", subscription("sub_1", "active"), NOW + 5)
    assert await deliver(redis, late) is None
    assert await status(redis, account) == "canceled"
    # A new subscription does make the account active again.
    fresh = event("evt_new", "customer.subscription.created", subscription("sub_2", "active"), NOW + 50)
    assert await deliver(redis, fresh) == account
    assert (await BillingStore(redis, SEALER).state(account)).subscription_id == "sub_2"


async def test_an_old_subscription_ending_does_not_end_the_current_one(redis, account):
    await deliver(redis, event("evt_b", "customer.subscription.created", subscription("sub_2", "active"), NOW))
    ended = event("evt_a", "customer.subscription.deleted", subscription("sub_1", "canceled"), NOW + 10)
    assert await deliver(redis, ended) is None
    state = await BillingStore(redis, SEALER).state(account)
    assert (state.status, state.subscription_id) == ("active", "sub_2")


# ---- invoices ---------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
async def test_a_failed_payment_makes_the_account_past_due_until_paid(redis, account, legacy):
    await deliver(redis, event("evt_s", "customer.subscription.created", subscription("sub_1", "active"), NOW))
    failed = event("evt_f1", "invoice.payment_failed", invoice("sub_1", legacy=legacy), NOW + 60)
    assert await deliver(redis, failed) == account
    state = await BillingStore(redis, SEALER).state(account)
    assert (state.status, state.status_since) == ("past_due", NOW + 60)
    # A retry that fails again does not restart the grace period.
    again = event("evt_f2", "invoice.payment_failed", invoice("sub_1", legacy=legacy), NOW + 3600)
    assert await deliver(redis, again) is None
    assert (await BillingStore(redis, SEALER).state(account)).status_since == NOW + 60
    paid = event("evt_p", "invoice.paid", invoice("sub_1", legacy=legacy), NOW + 7200)
    assert await deliver(redis, paid) == account
    assert await status(redis, account) == "active"
    # The first failure, delivered late, is older than the payment: nothing changes.
    assert await deliver(redis, event("evt_f0", "invoice.payment_failed", invoice("sub_1"), NOW + 30)) is None
    assert await status(redis, account) == "active"


async def test_invoices_of_another_subscription_or_a_canceled_one_change_nothing(redis, account):
    await deliver(redis, event("evt_s", "customer.subscription.created", subscription("sub_1", "active"), NOW))
    assert await deliver(redis, event("evt_x", "invoice.payment_failed", invoice("sub_other"), NOW + 5)) is None
    assert await status(redis, account) == "active"
    await deliver(redis, event("evt_c", "customer.subscription.deleted", subscription("sub_1", "canceled"), NOW + 10))
    # The final invoice of a canceled subscription being paid does not reactivate it.
    assert await deliver(redis, event("evt_final", "invoice.paid", invoice("sub_1"), NOW + 20)) is None
    assert await status(redis, account) == "canceled"


# ---- checkout ---------------------------------------------------------------------------------

async def test_checkout_completed_links_the_subscription_found_by_customer(redis, account):
    assert await deliver(redis, event("evt_cs", "checkout.session.completed", checkout("sub_1"), NOW + 5)) is None
    state = await BillingStore(redis, SEALER).state(account)
    assert (state.subscription_id, state.status) == ("sub_1", "none")  # status comes from the subscription
    # The subscription was created before the session completed; its event still applies.
    created = event("evt_sc", "customer.subscription.created", subscription("sub_1", "active"), NOW)
    assert await deliver(redis, created) == account
    assert await status(redis, account) == "active"


async def test_checkout_after_the_subscription_event_keeps_it(redis, account):
    await deliver(redis, event("evt_sc", "customer.subscription.created", subscription("sub_1", "active"), NOW))
    assert await deliver(redis, event("evt_cs", "checkout.session.completed", checkout("sub_1"), NOW + 1)) is None
    state = await BillingStore(redis, SEALER).state(account)
    assert (state.subscription_id, state.status) == ("sub_1", "active")


# ---- free tier --------------------------------------------------------------------------------

async def test_usage_before_the_subscription_is_recorded_as_not_billed(redis, account):
    await redis.hset(account_usage_key(account, MONTH), "cost_micro_units", 3_500_000)
    await deliver(redis, event("evt_1", "customer.subscription.created", subscription("sub_1", "trialing"), NOW))
    await redis.hincrby(account_usage_key(account, MONTH), "cost_micro_units", 1_000_000)
    await deliver(redis, event("evt_2", "customer.subscription.updated", subscription("sub_1", "active"), NOW + 1))
    state = await BillingStore(redis, SEALER).state(account)
    assert state.unbilled_micro(MONTH) == 3_500_000  # fixed when the subscription began
    assert state.unbilled_micro("2026-04") == 0
