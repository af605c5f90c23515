"""``BillingService`` (actors/billing/service.py) over the real SDK, the local Stripe-compatible
server and real Redis: customers made once (at sign-up, or later when Stripe was away),
Checkout and portal links, the overview, and a webhook that every cache holder confirms."""

from __future__ import annotations

import json
import time

import pytest

from actors.accounts.store import account_usage_key
from actors.accounts.sealing import AccountSealer
from actors.billing.service import BILLING_TOPIC, BillingService, SealedBillingIds
from actors.billing.stripe_api import BillingUnavailable, StripeBilling
from actors.billing.webhooks import InvalidWebhook
from actors.metering.record import current_month
from config.settings import load_settings
from tests.support.key_material import ACCOUNTS_MATERIAL, account_store
from tests.support.listeners import listening
from tests.support.stripe_server import METERED_PRICE, SECRET_KEY, sign_webhook, webhook_event

WEBHOOK_SECRET = "whsec_unit_neuroapi_0123456789"


@pytest.fixture
async def billing(fake, redis, tmp_path):
    settings = load_settings(environ={"NEUROAPI_DATA_DIR": str(tmp_path)}).model_copy(update={
        "stripe_price": METERED_PRICE, "billing_free_cost_units": 10})
    service = BillingService(settings, redis, StripeBilling(SECRET_KEY, fake.url), WEBHOOK_SECRET,
                             ids=SealedBillingIds(redis, AccountSealer(ACCOUNTS_MATERIAL)),
                             email_of=account_store(redis).email_of)
    yield service
    await service.aclose()


async def new_account(redis) -> str:
    return (await account_store(redis).create("dev@example.com")).id


async def test_a_customer_is_made_once_per_account(billing, fake, redis):
    account_id = await new_account(redis)
    await billing.customer_at_signup(account_id)
    first = await billing.ensure_customer(account_id)
    assert await billing.ensure_customer(account_id) == first
    assert list(fake.customers) == [first] and fake.customers[first]["email"] == "dev@example.com"


async def test_stripe_away_at_sign_up_loses_nothing_and_the_customer_comes_later(billing, fake, redis):
    account_id = await new_account(redis)
    fake.down = True
    await billing.customer_at_signup(account_id)  # no exception: the sign-up goes on
    with pytest.raises(BillingUnavailable):
        await billing.checkout_url(account_id)
    fake.down = False
    url = await billing.checkout_url(account_id)
    [session] = fake.checkout_sessions.values()
    assert session["url"] == url and session["customer"] == await billing.ids.customer_id(account_id)


async def test_the_overview_counts_this_months_cost_against_the_allowance(billing, redis):
    account_id = await new_account(redis)
    month = current_month(int(time.time() * 1000))
    await redis.hincrby(account_usage_key(account_id, month), "cost_micro_units", 7_250_000)
    overview = await billing.overview(account_id)
    assert (overview["cost_units"], overview["free_cost_units"], overview["free_cost_units_left"]) == (
        "7.25", "10", "2.75")
    assert (overview["status"], overview["subscribed"], overview["may_call"]) == ("none", False, True)
    await redis.hincrby(account_usage_key(account_id, month), "cost_micro_units", 3_000_000)
    assert (await billing.overview(account_id))["may_call"] is False


async def test_a_webhook_is_confirmed_by_every_cache_holder_before_it_returns(billing, redis, own_redis):
    account_id = await new_account(redis)
    customer = await billing.ensure_customer(account_id)
    heard: list[tuple[str, str]] = []
    async with listening(own_redis.url, lambda topic, subject: heard.append((topic, subject))):
        event = webhook_event("customer.subscription.created", {
            "id": "sub_1", "object": "subscription", "customer": customer, "status": "active",
            "created": int(time.time()), "items": {"object": "list", "data": []}})
        payload = json.dumps(event).encode()
        await billing.webhook(payload, sign_webhook(payload, WEBHOOK_SECRET))
        assert (BILLING_TOPIC, account_id) in heard  # heard before webhook() returned
        assert (await billing.store.state(account_id)).status == "active"
        with pytest.raises(InvalidWebhook):
            await billing.webhook(payload, sign_webhook(payload, "whsec_not_the_secret_at_all"))
