"""StripeBilling over the real stripe SDK, against the local Stripe-compatible server.

These keep both sides honest: what the SDK sends is what Stripe's API reference documents
(form fields asserted as the server received them), and the server's answers are ones the SDK
parses into its own objects and errors."""

from __future__ import annotations

import json
import time
import traceback

import pytest
import stripe

from actors.billing.stripe_api import (
    BillingRejected,
    BillingUnavailable,
    StripeBilling,
    customer_idempotency_key,
)
from tests.support.stripe_server import (
    LICENSED_PRICE,
    METERED_PRICE,
    SECRET_KEY,
    FakeStripe,
    sign_webhook,
    webhook_event,
)

EVENT = "neuroapi_cost_units"
WEBHOOK_SECRET = "whsec_test_neuroapi_0123456789abcdef"


@pytest.fixture
async def billing(fake):
    client = StripeBilling(SECRET_KEY, fake.url)
    yield client
    await client.aclose()


def _sdk(fake: FakeStripe) -> stripe.StripeClient:
    """The bare SDK, to see the server's own answers without StripeBilling's mapping."""
    return stripe.StripeClient(SECRET_KEY, base_addresses={"api": fake.url}, max_network_retries=0,
                               http_client=stripe.HTTPXClient())


# customers


async def test_customer_is_created_with_the_email_and_account_metadata(fake, billing):
    customer_id = await billing.create_customer("ada@example.com", "acct_1")

    assert customer_id.startswith("cus_")
    assert fake.customers[customer_id]["email"] == "ada@example.com"
    assert fake.customers[customer_id]["metadata"] == {"neuroapi_account": "acct_1"}
    sent = fake.requests_to("/v1/customers")[-1]
    assert sent.method == "POST"
    assert sent.fields == {"email": "ada@example.com", "metadata[neuroapi_account]": "acct_1"}
    assert sent.headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent.headers["idempotency-key"] == customer_idempotency_key("acct_1")


async def test_the_same_account_twice_makes_one_customer(fake, billing):
    first = await billing.create_customer("ada@example.com", "acct_1")
    again = await billing.create_customer("ada@example.com", "acct_1")
    other = await billing.create_customer("bob@example.com", "acct_2")

    assert again == first and other != first
    assert len(fake.requests_to("/v1/customers")) == 3  # the retry reached Stripe, which replayed
    assert sorted(c["metadata"]["neuroapi_account"] for c in fake.customers.values()) == ["acct_1", "acct_2"]


async def test_a_failed_sign_up_retried_later_still_makes_one_customer(fake, billing):
    fake.fail_next(1, status=503)
    with pytest.raises(BillingUnavailable):
        await billing.create_customer("ada@example.com", "acct_1")
    fake.down = True
    with pytest.raises(BillingUnavailable):
        await billing.create_customer("ada@example.com", "acct_1")
    fake.down = False

    customer_id = await billing.create_customer("ada@example.com", "acct_1")
    assert await billing.create_customer("ada@example.com", "acct_1") == customer_id
    assert list(fake.customers) == [customer_id]


async def test_reusing_an_accounts_key_with_other_parameters_is_refused(fake, billing):
    """Stripe's idempotency layer compares parameters: a changed email within the key's life is
    an idempotency_error, not a second customer."""
    await billing.create_customer("ada@example.com", "acct_1")
    with pytest.raises(BillingRejected) as refused:
        await billing.create_customer("other@example.com", "acct_1")
    assert refused.value.status == 400 and "idempotency_error" in str(refused.value)
    assert len(fake.customers) == 1


# checkout and portal


async def test_checkout_url_subscribes_the_customer_to_the_metered_price(fake, billing):
    customer_id = await billing.create_customer("ada@example.com", "acct_1")

    url = await billing.checkout_url(customer_id, METERED_PRICE, "https://app.test/ok", "https://app.test/no")

    (session,) = fake.checkout_sessions.values()
    assert url == session["url"] and url.startswith("https://checkout.stripe.com/c/pay/cs_test_")
    sent = fake.requests_to("/v1/checkout/sessions")[-1]
    assert sent.fields == {
        "mode": "subscription",
        "customer": customer_id,
        "line_items[0][price]": METERED_PRICE,
        "success_url": "https://app.test/ok",
        "cancel_url": "https://app.test/no",
    }
    assert sent.form["line_items"] == [{"price": METERED_PRICE}]
    assert session["mode"] == "subscription" and session["customer"] == customer_id


async def test_the_server_refuses_a_quantity_for_a_metered_price_as_stripe_does(fake, billing):
    customer_id = await billing.create_customer("ada@example.com", "acct_1")
    base = {"mode": "subscription", "customer": customer_id, "success_url": "https://app.test/ok"}
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await _sdk(fake).v1.checkout.sessions.create_async(
            {**base, "line_items": [{"price": METERED_PRICE, "quantity": 1}]})
    assert refused.value.param == "line_items[0][quantity]"
    with pytest.raises(stripe.InvalidRequestError):  # and a licensed price needs one
        await _sdk(fake).v1.checkout.sessions.create_async({**base, "line_items": [{"price": LICENSED_PRICE}]})
    assert fake.checkout_sessions == {}


async def test_checkout_for_an_unknown_customer_or_price_is_rejected(fake, billing):
    with pytest.raises(BillingRejected) as no_customer:
        await billing.checkout_url("cus_missing", METERED_PRICE, "https://app.test/ok", "https://app.test/no")
    assert (no_customer.value.status, no_customer.value.code) == (400, "resource_missing")
    customer_id = await billing.create_customer("ada@example.com", "acct_1")
    with pytest.raises(BillingRejected) as no_price:
        await billing.checkout_url(customer_id, "price_missing", "https://app.test/ok", "https://app.test/no")
    assert "No such price" in str(no_price.value)


async def test_portal_url_is_for_the_customer_and_returns_to_the_app(fake, billing):
    customer_id = await billing.create_customer("ada@example.com", "acct_1")

    url = await billing.portal_url(customer_id, "https://app.test/account")

    (session,) = fake.portal_sessions.values()
    assert url == session["url"] and url.startswith("https://billing.stripe.com/p/session/")
    assert session["object"] == "billing_portal.session" and session["customer"] == customer_id
    assert fake.requests_to("/v1/billing_portal/sessions")[-1].fields == {
        "customer": customer_id, "return_url": "https://app.test/account"}
    with pytest.raises(BillingRejected):
        await billing.portal_url("cus_missing", "https://app.test/account")


# meter events


async def test_meter_event_carries_the_customer_value_identifier_and_timestamp(fake, billing):
    await billing.send_meter_event(EVENT, "cus_A", 42, "acct_1:2026-12:1", 1_796_000_000)

    sent = fake.requests_to("/v1/billing/meter_events")[-1]
    assert sent.fields == {
        "event_name": EVENT,
        "payload[stripe_customer_id]": "cus_A",
        "payload[value]": "42",
        "identifier": "acct_1:2026-12:1",
        "timestamp": "1796000000",
    }
    assert fake.meter_events == [{
        "object": "billing.meter_event", "created": fake.meter_events[0]["created"], "event_name": EVENT,
        "identifier": "acct_1:2026-12:1", "livemode": False,
        "payload": {"stripe_customer_id": "cus_A", "value": "42"}, "timestamp": 1_796_000_000,
    }]
    with pytest.raises(ValueError):
        await billing.send_meter_event(EVENT, "cus_A", 1.5, "acct_1:2026-12:2", 1_796_000_000)


async def test_a_repeated_identifier_is_refused_by_the_server_and_counted_once(fake, billing):
    await billing.send_meter_event(EVENT, "cus_A", 7, "acct_1:2026-12:1", 1_796_000_000)
    # The server answers a repeat the way Stripe's v1 endpoint does...
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await _sdk(fake).v1.billing.meter_events.create_async({
            "event_name": EVENT, "identifier": "acct_1:2026-12:1",
            "payload": {"stripe_customer_id": "cus_A", "value": "7"}})
    assert refused.value.http_status == 400
    assert refused.value.user_message == "An event already exists with identifier acct_1:2026-12:1."
    # ...and StripeBilling takes that as "already recorded".
    await billing.send_meter_event(EVENT, "cus_A", 7, "acct_1:2026-12:1", 1_796_000_000)
    await billing.send_meter_event(EVENT, "cus_A", 3, "acct_1:2026-12:2", 1_796_000_000)

    assert [e["identifier"] for e in fake.meter_events] == ["acct_1:2026-12:1", "acct_1:2026-12:2"]
    assert fake.meter_total("cus_A", EVENT) == 10


async def test_an_event_accepted_but_answered_500_is_resent_and_counted_once(fake, billing):
    fake.accept_then_fail_once()
    with pytest.raises(BillingUnavailable) as lost:
        await billing.send_meter_event(EVENT, "cus_A", 9, "acct_1:2026-12:1", 1_796_000_000)
    assert lost.value.status == 500
    assert len(fake.meter_events) == 1  # Stripe has it; the caller does not know

    await billing.send_meter_event(EVENT, "cus_A", 9, "acct_1:2026-12:1", 1_796_000_000)

    assert fake.meter_total("cus_A") == 9
    first, resend = fake.requests_to("/v1/billing/meter_events")
    assert first.headers["idempotency-key"] != resend.headers["idempotency-key"]


async def test_an_outage_delays_a_meter_event_and_loses_nothing(fake, billing):
    fake.fail_next(2, status=503)
    for _ in range(2):
        with pytest.raises(BillingUnavailable):
            await billing.send_meter_event(EVENT, "cus_A", 5, "acct_1:2026-12:1", 1_796_000_000)
    fake.down = True
    with pytest.raises(BillingUnavailable):
        await billing.send_meter_event(EVENT, "cus_A", 5, "acct_1:2026-12:1", 1_796_000_000)
    fake.down = False
    assert fake.meter_events == []

    await billing.send_meter_event(EVENT, "cus_A", 5, "acct_1:2026-12:1", 1_796_000_000)
    assert fake.meter_total("cus_A") == 5


@pytest.mark.parametrize("status", [500, 502, 503, 429, 409])
async def test_server_trouble_is_billing_unavailable(fake, billing, status):
    fake.fail_next(1, status=status)
    with pytest.raises(BillingUnavailable) as unavailable:
        await billing.send_meter_event(EVENT, "cus_A", 1, f"x:{status}", 1_796_000_000)
    assert unavailable.value.status == status
    assert fake.meter_events == []


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_a_refusal_retrying_will_not_fix_is_billing_rejected(fake, billing, status):
    fake.fail_next(1, status=status)
    with pytest.raises(BillingRejected) as rejected:
        await billing.send_meter_event(EVENT, "cus_A", 1, f"x:{status}", 1_796_000_000)
    assert rejected.value.status == status


async def test_a_wrong_secret_key_is_rejected_with_401(fake):
    client = StripeBilling("sk_test_notTheRightKey000000000000", fake.url)
    try:
        with pytest.raises(BillingRejected) as rejected:
            await client.create_customer("ada@example.com", "acct_1")
    finally:
        await client.aclose()
    assert rejected.value.status == 401 and fake.customers == {}


async def test_unreachable_stripe_is_billing_unavailable():
    server = FakeStripe().start()
    url = server.url
    server.stop()
    client = StripeBilling(SECRET_KEY, url)
    try:
        with pytest.raises(BillingUnavailable) as unavailable:
            await client.portal_url("cus_A", "https://app.test/account")
    finally:
        await client.aclose()
    assert unavailable.value.status is None


# the secret key


class _EchoingStripe(FakeStripe):
    """A server that puts the caller's whole key in its error message (Stripe masks it)."""

    def _authenticate(self, authorization: str) -> None:
        from tests.support.stripe_server import _ApiError

        raise _ApiError(401, "invalid_request_error", f"Invalid API Key provided: {authorization}")


def _everything_said(exc: BaseException) -> str:
    return " ".join([str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))])


async def test_the_secret_key_is_never_in_repr_or_errors(fake):
    secret = "sk_test_TopSecretKeyValue000000000000"
    echoing = _EchoingStripe(api_key=secret).start()
    client = StripeBilling(secret, echoing.url)
    try:
        assert secret not in repr(client) and secret not in str(client)
        with pytest.raises(BillingRejected) as echoed:
            await client.create_customer("ada@example.com", "acct_1")
        echoing.stop()
        with pytest.raises(BillingUnavailable) as unreachable:
            await client.send_meter_event(EVENT, "cus_A", 1, "acct_1:2026-12:1", 1_796_000_000)
    finally:
        await client.aclose()
    assert echoed.value.status == 401
    assert echoing.requests[-1].headers["authorization"] == f"Bearer {secret}"  # it did send the key
    for exc in (echoed.value, unreachable.value):
        said = _everything_said(exc)
        assert secret not in said and "TopSecretKeyValue" not in said
        assert exc.__cause__ is None and exc.__suppress_context__


# webhooks


def test_sign_webhook_is_accepted_by_the_sdks_own_verification():
    event = webhook_event("customer.subscription.updated",
                          {"id": "sub_1", "object": "subscription", "status": "active", "customer": "cus_A"})
    payload = json.dumps(event).encode()

    verified = stripe.Webhook.construct_event(payload, sign_webhook(payload, WEBHOOK_SECRET), WEBHOOK_SECRET)
    assert verified.id == event["id"] and verified.type == "customer.subscription.updated"
    assert verified.data.object.status == "active"
    recent = sign_webhook(payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 200)
    assert stripe.Webhook.construct_event(payload, recent, WEBHOOK_SECRET, tolerance=300).id == event["id"]


@pytest.mark.parametrize("tamper", ["body", "secret", "stale"])
def test_the_sdk_refuses_a_bad_or_stale_signature(tamper):
    payload = json.dumps(webhook_event("invoice.paid", {"id": "in_1", "object": "invoice"})).encode()
    header = sign_webhook(payload, WEBHOOK_SECRET)
    if tamper == "body":
        payload = payload.replace(b"in_1", b"in_2")
    elif tamper == "secret":
        header = sign_webhook(payload, "whsec_someone_else")
    else:
        header = sign_webhook(payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 301)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET, tolerance=300)
