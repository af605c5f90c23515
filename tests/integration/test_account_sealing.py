"""Account data encrypted at rest, on the real gateway and real Redis: after sign-ups, log-ins,
duplicate sign-ups, exports, an operator's scope lookup by email and a pre-sealing record's
first log-in, a scan of every key name, hash field, value and stream entry finds no account's
email in any form (``actors.accounts.sealing``)."""

from __future__ import annotations

import secrets
import time

import redis.asyncio as aioredis

from actors.accounts.passwords import hash_password
from actors.accounts.sealing import legacy_email_index_key
from tests.support.gateway_client import bearer
from tests.unit.test_account_sealing import leaked

PASSWORD = "a long enough password"


async def test_redis_holds_no_email_in_any_form_while_accounts_keep_working(gateway, client):
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

        # Every form: plain, lower-cased, SHA-256 hex of both, and the pre-sealing index name.
        assert await leaked(redis, *emails, legacy_email) == []
    finally:
        await redis.aclose()
