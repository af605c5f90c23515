"""Account data encrypted at rest, on the real gateway and real Redis: after sign-ups, log-ins,
duplicate sign-ups, exports, an operator's scope lookup by email, Stripe customers made at
sign-up, subscription webhooks and a pre-sealing record's first log-in and webhook, a scan of
every key name, hash field, value and stream entry finds no account's email in any form, and no
Stripe customer or subscription id, plain or as the pre-sealing index name
(``actors.accounts.sealing``)."""

from __future__ import annotations

import secrets
import time

import redis.asyncio as aioredis

from actors.accounts.passwords import hash_password
from actors.accounts.sealing import legacy_email_index_key
from actors.accounts.sealing import legacy_customer_index_key
from tests.integration.test_billing import deliver, subscription
from tests.support.gateway_client import bearer
from tests.support.stripe_server import webhook_event
from tests.unit.test_account_sealing import leaked, stripe_ids_seen

PASSWORD = "a long enough password"


async def test_redis_holds_no_email_in_any_form_while_accounts_keep_working(gateway, client, stripe_server):
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    try:
        emails = [f"Sealed-{secrets.token_hex(4)}@Example.com" for _ in range(2)]
        ids = []
        for email in emails:
            signed_up = await client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD})
            assert signed_up.status_code == 201, signed_up.text
            ids.append(signed_up.json()["id"])
            again = await client.post("/v1/auth/signup", json={"email": email.lower(), "password": PASSWORD})
            assert again.status_code == 409
        token = (await client.post("/v1/auth/login", json={"email": emails[0].upper(), "password": PASSWORD})
                 ).json()["token"]
        exported = (await client.get("/v1/account/export", headers=bearer(token))).json()
        assert exported["account"]["email"] == emails[0].lower()
        admin = bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"])
        lookup = await client.post("/v1/admin/account-scope/lookup", json={"email": emails[1]}, headers=admin)
        assert lookup.status_code == 200 and lookup.json()["account_id"] == ids[1]

        # A record written before sealing: plaintext email, SHA-256 index. It logs in, and that
        # touch seals and re-indexes it.
        legacy_email = f"legacy-{secrets.token_hex(4)}@example.com"
        legacy_id = "acct_" + secrets.token_hex(8)
        await redis.set(legacy_email_index_key(legacy_email), legacy_id)
        await redis.hset(f"neuroapi:account:{legacy_id}", mapping={
            "email": legacy_email, "status": "active", "created_at": int(time.time()),
            "stripe_customer_id": "", "stripe_subscription_id": "", "password_hash": hash_password(PASSWORD, 4)})
        assert await leaked(redis, legacy_email)  # the scan sees it while it is plaintext
        logged_in = await client.post("/v1/auth/login", json={"email": legacy_email, "password": PASSWORD})
        assert logged_in.status_code == 200, logged_in.text
        refused = await client.post("/v1/auth/signup", json={"email": legacy_email, "password": PASSWORD})
        assert refused.status_code == 409

        # Billing is on: each sign-up made a Stripe customer; a subscription webhook for each.
        stripe_ids = []
        for account_id in ids:
            [customer] = [c for c, made in stripe_server.customers.items()
                          if made["metadata"] == {"neuroapi_account": account_id}]
            sub_id = "sub_" + secrets.token_hex(6)
            created = webhook_event("customer.subscription.created", subscription(customer, "active", sub_id))
            assert (await deliver(client, created)).status_code == 200
            stripe_ids += [customer, sub_id]
        # Ids written before sealing: plaintext fields and index. A webhook finds the account by
        # the old index name, and that touch seals the ids and re-keys the index.
        await redis.hset(f"neuroapi:account:{legacy_id}", mapping={
            "stripe_customer_id": "cus_legacy" + secrets.token_hex(4), "stripe_subscription_id": ""})
        legacy_customer = await redis.hget(f"neuroapi:account:{legacy_id}", "stripe_customer_id")
        await redis.set(legacy_customer_index_key(legacy_customer), legacy_id)
        await redis.sadd("neuroapi:billing-accounts", legacy_id)
        assert await stripe_ids_seen(redis, legacy_customer) == [legacy_customer]
        legacy_sub = "sub_" + secrets.token_hex(6)
        created = webhook_event("customer.subscription.created", subscription(legacy_customer, "active", legacy_sub))
        assert (await deliver(client, created)).status_code == 200
        assert await redis.hget(f"neuroapi:billing:{legacy_id}", "status") == "active"  # found, applied
        stripe_ids += [legacy_customer, legacy_sub]

        # Every form: plain, lower-cased, SHA-256 hex of both, and the pre-sealing index name.
        assert await leaked(redis, *emails, legacy_email) == []
        # No Stripe id in a key name (the old index name included) or in any value.
        assert await stripe_ids_seen(redis, *stripe_ids) == []
    finally:
        await redis.aclose()
