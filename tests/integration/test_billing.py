"""Billing on the real gateway (two ingress replicas, real Redis) with the official stripe SDK
against the local Stripe-compatible server: customers at sign-up (and after a Stripe outage),
Checkout and portal links, signed webhooks, gating that follows the subscription on every
replica once the webhook returns, and usage reported to Stripe exactly once."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray import serve
import redis.asyncio as aioredis

from actors.accounts.sealing import AccountSealer
from actors.accounts.store import account_usage_key
from actors.billing.reporter import UsageReporter
from actors.billing.service import StoredSubscriptions
from actors.billing.store import BillingStore
from actors.billing.stripe_api import StripeBilling
from actors.metering.record import current_month
from config.secrets import load_key_material
from config.settings import load_settings
from core.money import MICRO
from tests.conftest import FREE_COST_UNITS, STRIPE_WEBHOOK_SECRET
from tests.support.gateway_client import bearer
from tests.unit.test_account_sealing import stripe_ids_seen
from tests.support.leak_scan import scan_files, scan_redis
from tests.support.stripe_server import METERED_PRICE, SECRET_KEY, sign_webhook, webhook_event

PASSWORD = "a long enough password"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def sign_up(client) -> tuple[str, str, str]:
    """(account id, session token, API key) of a new account, made over HTTP."""
    credentials = {"email": f"bill-{secrets.token_hex(4)}@example.com", "password": PASSWORD}
    created = await client.post("/v1/auth/signup", json=credentials)
    assert created.status_code == 201, created.text
    token = (await client.post("/v1/auth/login", json=credentials)).json()["token"]
    key = (await client.post("/v1/keys", json={"name": "billing"}, headers=bearer(token))).json()["key"]
    return created.json()["id"], token, key


@pytest.fixture
async def redis(gateway):
    client = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def store(gateway, redis) -> BillingStore:
    """The Stripe ids are sealed at rest: opened here with the gateway's key material (read
    again on each use, since a rotation test may add versions)."""
    settings = load_settings(gateway.config_path)
    return BillingStore(redis, AccountSealer(lambda: load_key_material(settings)[0]))


async def deliver(client, event: dict, secret: str = STRIPE_WEBHOOK_SECRET, at: int | None = None):
    payload = json.dumps(event).encode()
    return await client.post("/v1/billing/webhook", content=payload,
                             headers={"Stripe-Signature": sign_webhook(payload, secret, at),
                                      "Content-Type": "application/json"})


def subscription(customer: str, status: str, sub_id: str) -> dict:
    now = int(time.time())
    return {"id": sub_id, "object": "subscription", "customer": customer, "status": status, "created": now,
            "items": {"object": "list", "data": [{"id": "si_" + secrets.token_hex(6), "object": "subscription_item",
                                                  "current_period_start": now, "current_period_end": now + 30 * 86400,
                                                  "price": {"id": METERED_PRICE}}]}}


async def statuses(client, key: str, n: int = 12) -> set[int]:
    """The statuses of ``n`` chat calls (spread over both ingress replicas)."""
    return {(await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))).status_code
            for _ in range(n)}


async def test_sign_up_makes_a_stripe_customer(client, stripe_server, store):
    account_id, _, _ = await sign_up(client)
    customer = await store.customer_id(account_id)
    assert customer in stripe_server.customers
    assert stripe_server.customers[customer]["metadata"] == {"neuroapi_account": account_id}


async def test_a_stripe_outage_at_sign_up_loses_no_account(client, stripe_server, store):
    stripe_server.down = True
    try:
        account_id, token, key = await sign_up(client)  # the account exists and works
        assert await statuses(client, key, 2) == {200}
        assert await store.customer_id(account_id) == ""
    finally:
        stripe_server.down = False
    checkout = await client.post("/v1/billing/checkout", headers=bearer(token))
    assert checkout.status_code == 200, checkout.text
    customer = await store.customer_id(account_id)
    assert customer in stripe_server.customers  # made when first needed


async def test_checkout_and_portal_links_and_the_overview(client, stripe_server):
    account_id, token, _ = await sign_up(client)
    checkout = (await client.post("/v1/billing/checkout", headers=bearer(token))).json()
    session = next(s for s in stripe_server.checkout_sessions.values() if s["url"] == checkout["url"])
    assert (session["mode"], session["customer"]) == ("subscription", session["customer"])
    assert stripe_server.requests_to("/v1/checkout/sessions")[-1].form["line_items"] == [{"price": METERED_PRICE}]
    portal = (await client.post("/v1/billing/portal", headers=bearer(token))).json()
    assert portal["url"] in {s["url"] for s in stripe_server.portal_sessions.values()}
    overview = (await client.get("/v1/billing", headers=bearer(token))).json()
    assert (overview["enabled"], overview["status"], overview["may_call"]) == (True, "none", True)
    assert overview["free_cost_units"] == str(FREE_COST_UNITS)
    assert (await client.post("/v1/billing/checkout")).status_code == 401  # a session is needed


async def test_webhooks_need_a_fresh_valid_signature(client):
    event = webhook_event("invoice.paid", {"id": "in_x", "object": "invoice", "customer": "cus_nobody"})
    assert (await deliver(client, event)).status_code == 200
    for bad in (await deliver(client, event, secret="whsec_wrongwrongwrong"),
                await deliver(client, event, at=int(time.time()) - 301)):
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_signature"


async def test_gating_follows_the_subscription_on_every_replica_once_the_webhook_returns(client, redis, store):
    account_id, _, key = await sign_up(client)
    customer = await store.customer_id(account_id)
    # Past the free allowance, as if it had used it all this month.
    await redis.hincrby(account_usage_key(account_id, current_month(int(time.time() * 1000))),
                        "cost_micro_units", FREE_COST_UNITS * MICRO)
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "payment_required"
    assert "/v1/billing/checkout" in refused.json()["error"]["message"]
    assert (await client.get("/v1/models", headers=bearer(key))).status_code == 200  # not inference
    assert await statuses(client, key) == {402}

    sub_id = "sub_" + secrets.token_hex(6)
    assert (await deliver(client, webhook_event("customer.subscription.created",
                                                subscription(customer, "active", sub_id)))).status_code == 200
    assert await statuses(client, key) == {200}  # no grace: every replica, at once

    assert (await deliver(client, webhook_event("customer.subscription.deleted",
                                                subscription(customer, "canceled", sub_id),
                                                created=int(time.time()) + 1))).status_code == 200
    assert await statuses(client, key) == {402}


async def test_usage_reaches_stripe_exactly_once_through_a_crash_and_an_outage(client, stripe_server, redis,
                                                                                 gateway, store):
    account_id, _, key = await sign_up(client)
    customer = await store.customer_id(account_id)
    assert (await deliver(client, webhook_event("customer.subscription.created",
                                                subscription(customer, "active", "sub_" + secrets.token_hex(6))))
            ).status_code == 200
    month = current_month(int(time.time() * 1000))
    usage = account_usage_key(account_id, month)
    stripe = StripeBilling(SECRET_KEY, stripe_server.url)
    reporter = UsageReporter(redis, stripe, "neuroapi_cost_units", FREE_COST_UNITS * MICRO,
                             StoredSubscriptions(store))
    # Billable usage past the free allowance: 7.5 cost_units, then 5 more.
    await redis.hincrby(usage, "cost_micro_units", FREE_COST_UNITS * MICRO + 7_500_000)

    stripe_server.accept_then_fail_once()  # Stripe records it, the answer is lost: a crash
    await reporter.report_once()
    stripe_server.down = True  # then Stripe away for a pass
    await reporter.report_once()
    stripe_server.down = False
    await redis.hincrby(usage, "cost_micro_units", 5_000_000)
    await reporter.report_once()
    await reporter.report_once()
    await stripe.aclose()

    billed = stripe_server.meter_total(customer_id=customer)
    assert billed == 12  # whole cost_units, once each, through the crash and the outage
    [subscribed] = [s for s in await StoredSubscriptions(store).subscribed() if s.account_id == account_id]
    assert await reporter.owed_micro(subscribed, month) == 500_000  # the half: owed, not rounded away
    assert (await reporter.ledger(account_id, month)).reported_micro == billed * MICRO


async def test_the_reporter_deployment_gets_the_sealed_customer_ids_from_the_verifier(client, stripe_server,
                                                                                     redis, store):
    """The usage reporter holds no key material: its pass asks the verifier pool for the
    subscribed accounts' customer ids, and Redis never shows one."""
    account_id, _, _ = await sign_up(client)
    customer = await store.customer_id(account_id)
    sub_id = "sub_" + secrets.token_hex(6)
    assert (await deliver(client, webhook_event("customer.subscription.created",
                                                subscription(customer, "active", sub_id)))).status_code == 200
    await redis.hincrby(account_usage_key(account_id, current_month(int(time.time() * 1000))),
                        "cost_micro_units", FREE_COST_UNITS * MICRO + 2_000_000)
    reporter = serve.get_deployment_handle("BillingReporter", app_name="neuroapi")
    assert await reporter.report_once.remote() >= 1
    assert stripe_server.meter_total(customer_id=customer) == 2
    assert await stripe_ids_seen(redis, customer, sub_id) == []


def neuroapi(gateway, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "neuroapi"), *args, "--config", str(gateway.config_path)],
                          env={**os.environ, **gateway.environ}, capture_output=True, text=True, timeout=120)


async def test_the_cli_makes_customers_and_reports_usage_now(gateway, stripe_server, redis, client, store):
    email = f"cli-{secrets.token_hex(4)}@example.com"
    created = neuroapi(gateway, "accounts", "create", email)
    assert created.returncode == 0, created.stderr
    account_id = created.stderr.split()[2]  # "created account <id> for <email>"
    customer = await store.customer_id(account_id)
    assert customer in stripe_server.customers

    assert (await deliver(client, webhook_event("customer.subscription.created",
                                                subscription(customer, "active", "sub_" + secrets.token_hex(6))))
            ).status_code == 200
    await redis.hincrby(account_usage_key(account_id, current_month(int(time.time() * 1000))),
                        "cost_micro_units", FREE_COST_UNITS * MICRO + 3_000_000)
    report = neuroapi(gateway, "billing", "report")
    assert report.returncode == 0, report.stderr
    [line] = [row for row in report.stdout.splitlines() if row.startswith(account_id)]
    assert line.split("\t")[3:] == ["3", "sent"]
    assert stripe_server.meter_total(customer_id=customer) == 3
    again = neuroapi(gateway, "billing", "report")  # nothing new: nothing sent
    assert account_id not in again.stdout and stripe_server.meter_total(customer_id=customer) == 3


async def test_the_stripe_secrets_are_kept_nowhere(gateway, client, stripe_server):
    """After sign-ups, links, webhooks (a bad one too) and Stripe failing mid-request: neither
    Stripe secret is in Redis, in Ray's logs and session files, or in the gateway's data."""
    _, token, _ = await sign_up(client)
    stripe_server.fail_next(1, status=500)
    assert (await client.post("/v1/billing/portal", headers=bearer(token))).status_code == 503
    await deliver(client, webhook_event("invoice.paid", {"id": "in_y", "object": "invoice"}), secret="whsec_bad0000000")
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    for secret in (SECRET_KEY, STRIPE_WEBHOOK_SECRET):
        assert scan_redis(gateway.redis.url, secret) == []
        assert scan_files([session_dir, gateway.data_dir], secret) == []
