"""Who sets limits and how every replica learns them (issue 19), on the session gateway: the
owner's ``PATCH /v1/keys/{prefix}`` within the operator's limits, the admin API for any key or
account, each change confirmed by every ingress replica before the answer and audited."""

import json
import secrets

import redis.asyncio as aioredis
from ray import serve

from core.audit import AUDIT_STREAM
from core.limits import Limits
from tests.support.gateway_client import bearer

NONE = {"rpm": None, "tpm": None, "monthly_budget_cost_units": None, "account_monthly_budget_cost_units": None,
        "models": None}


async def owner_with_key(client) -> tuple[str, str, str, str]:
    """(email, session token, API key, its prefix) of a new account, made as a user makes one."""
    email = f"limits-{secrets.token_hex(4)}@example.com"
    credentials = {"email": email, "password": "a long enough password"}
    assert (await client.post("/v1/auth/signup", json=credentials)).status_code == 201
    token = (await client.post("/v1/auth/login", json=credentials)).json()["token"]
    made = (await client.post("/v1/keys", json={"name": "limited"}, headers=bearer(token))).json()
    return email, token, made["key"], made["prefix"]


async def listed(client, token: str, prefix: str) -> dict:
    [key] = [k for k in (await client.get("/v1/keys", headers=bearer(token))).json()["data"] if k["prefix"] == prefix]
    return key


async def audited(gateway, account_id: str) -> list[dict]:
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    try:
        return [f for _, f in await redis.xrange(AUDIT_STREAM) if f.get("account_id") == account_id]
    finally:
        await redis.aclose()


async def test_owner_and_operator_set_limits_every_replica_confirms_and_each_change_is_audited(client, gateway):
    email, token, key, prefix = await owner_with_key(client)
    admin = bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"])
    assert (await listed(client, token, prefix))["limits"] == NONE

    # The owner limits its own key; GET /v1/keys shows it.
    answer = await client.patch(f"/v1/keys/{prefix}", json={"rpm": 30, "models": ["private", "ft:bot"]},
                                headers=bearer(token))
    assert answer.status_code == 200, answer.text
    assert (await listed(client, token, prefix))["limits"] == {**NONE, "rpm": 30, "models": ["ft:bot", "private"]}

    # The operator caps it: the tighter value holds, the owner cannot go above it.
    answer = await client.put("/v1/admin/key-limits", json={"prefix": prefix, "rpm": 10, "tpm": 5000,
                                                            "monthly_budget_cost_units": "2.5"}, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["replicas_confirmed"] >= 2  # both ingress replicas dropped the cached key first
    shown = await listed(client, token, prefix)
    assert shown["limits"] == {**NONE, "rpm": 10, "tpm": 5000, "monthly_budget_cost_units": "2.5",
                               "models": ["ft:bot", "private"]}
    assert shown["operator_limits"] == {"rpm": 10, "tpm": 5000, "monthly_budget_cost_units": "2.5", "models": None}
    above = await client.patch(f"/v1/keys/{prefix}", json={"monthly_budget_cost_units": "3"}, headers=bearer(token))
    assert above.status_code == 403 and above.json()["error"]["code"] == "above_operator_limit"

    answer = await client.put("/v1/admin/account-budget", json={"email": email, "monthly_budget_cost_units": 40},
                              headers=admin)
    assert answer.status_code == 200 and answer.json()["replicas_confirmed"] >= 2
    assert (await listed(client, token, prefix))["limits"]["account_monthly_budget_cost_units"] == "40"

    # What the next request of the key is verified as carries all of it.
    verifier = serve.get_deployment_handle("KeyVerifier", app_name="neuroapi")
    assert (await verifier.verify.remote(key)).limits == Limits(
        rpm=10, tpm=5000, key_budget_micro=2_500_000, account_budget_micro=40_000_000,
        models=frozenset({"ft:bot", "private"}))

    account_id = answer.json()["account_id"]
    entries = [(e["action"], e["actor"].split(" ")[0]) for e in await audited(gateway, account_id)]
    assert entries == [("key.limits.owner", f"account:{account_id}"), ("key.limits", "admin-api"),
                       ("account.budget", "admin-api")]
    assert key.split("_")[2] not in json.dumps(await audited(gateway, account_id))


async def test_limits_changes_are_refused_for_bad_values_other_accounts_and_without_the_admin_token(client, gateway):
    _, token, _, prefix = await owner_with_key(client)
    _, other_token, _, other_prefix = await owner_with_key(client)
    for body in ({"rpm": 0}, {"tpm": 1.5}, {"monthly_budget_cost_units": 1.5}, {"models": []},
                 {"models": ["no spaces"]}, {"burst": 3}, {"monthly_budget_cost_units": "0.0000001"}):
        answer = await client.patch(f"/v1/keys/{prefix}", json=body, headers=bearer(token))
        assert answer.status_code == 400, (body, answer.text)
    # Another account's key and a key that does not exist look the same: 404.
    for target in (other_prefix, "neuro_zzzzzzzz"):
        answer = await client.patch(f"/v1/keys/{target}", json={"rpm": 1}, headers=bearer(token))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "key_not_found"
    assert (await listed(client, other_token, other_prefix))["limits"] == NONE
    assert (await client.patch(f"/v1/keys/{prefix}", json={"rpm": 1})).status_code == 401
    answer = await client.put("/v1/admin/key-limits", json={"prefix": prefix, "rpm": 1}, headers=bearer(token))
    assert answer.status_code == 401
    admin = bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"])
    answer = await client.put("/v1/admin/account-budget", json={"email": "nobody@example.com",
                                                                "monthly_budget_cost_units": "1"}, headers=admin)
    assert answer.status_code == 404
    assert (await client.put("/v1/admin/key-limits", json={"prefix": "neuro_zzzzzzzz"}, headers=admin)).status_code == 404
