"""Retention windows on the live gateway (issue 18, item 3): real calls through the session's
gateway write real per-call records, dedupe marks, monthly usage counters and audit entries;
then a controlled clock drives ``housekeeping_pass`` (the pass the Housekeeping deployment runs)
through each window against the gateway's own redis-server.

Why on a copy: a pass at a clock months ahead trims *every* older entry of the shared streams
and every older usage counter, not just this test's, i.e. other tests' data still inside its
window, and pytest runs tests/e2e (same session gateway) after tests/integration, so no file
name makes this module last. So the far-future passes run on a byte-for-byte copy of the
gateway's keyspace in another logical database of the same server (``COPY ... DB``: stream ids
and expiry times kept); the live database gets one pass at the real clock (as the deployment
runs it), after which the gateway must still serve and meter. Assertions look only at this
test's own records, account and audit entries."""

from __future__ import annotations

import math
import os

import ray
import redis.asyncio as aioredis

from actors.accounts.store import account_usage_key
from actors.billing.reporter import cursor_key, month_start
from actors.housekeeping import LEADER_KEY, housekeeping_pass
from actors.metering.record import current_month
from actors.metering.retention import DAY_MS, months_before
from actors.metering.usage_store import CALLS_STREAM, counted_key
from config.settings import load_settings
from core.audit import AUDIT_STREAM
from tests.support.gateway_client import account_with_key, bearer, records_for

SCRATCH_DB = 9  # nothing else in the suite uses it; emptied before and after


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello retention"}]}


def clock(ms: int) -> float:
    """Seconds that ``housekeeping_pass`` turns back into exactly ``ms`` (``int(now * 1000)``)."""
    now = ms / 1000
    while int(now * 1000) < ms:
        now = math.nextafter(now, math.inf)
    while int(now * 1000) > ms:
        now = math.nextafter(now, -math.inf)
    return now


def scratch_url(url: str) -> str:
    base, _, _ = url.rpartition("/")  # redis://127.0.0.1:PORT/0
    return f"{base}/{SCRATCH_DB}"


async def copy_keyspace(live: aioredis.Redis, scratch: aioredis.Redis) -> None:
    await scratch.flushdb()
    keys = [key async for key in live.scan_iter(count=1000)]
    async with live.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.copy(key, key, destination_db=SCRATCH_DB, replace=True)
        await pipe.execute()
    await scratch.delete(LEADER_KEY)  # copied mid-pass of the deployment's own: not the copy's
    assert await scratch.xlen(CALLS_STREAM) > 0


async def call_ids(redis: aioredis.Redis, request_ids: set[str]) -> dict[str, int]:
    """request id → its calls-stream entry's time (ms), for those still in the stream."""
    return {fields["request_id"]: int(entry_id.split("-")[0])
            for entry_id, fields in await redis.xrange(CALLS_STREAM) if fields["request_id"] in request_ids}


async def audit_ids(redis: aioredis.Redis, account_id: str) -> list[str]:
    return [entry_id for entry_id, fields in await redis.xrange(AUDIT_STREAM)
            if fields.get("account_id") == account_id]


async def test_retention_trims_the_gateways_records_by_age_and_it_keeps_metering(client, gateway):
    admin = bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"])
    settings = load_settings(gateway.config_path)
    calls_window, audit_window = settings.calls_retention_days * DAY_MS, settings.audit_retention_days * DAY_MS

    # Real calls and an audited admin action, through the gateway.
    email, key = await account_with_key(client)
    account_id = (await client.post("/v1/admin/account-scope/lookup", json={"email": email},
                                    headers=admin)).json()["account_id"]
    request_ids = []
    for model in ("gpt-4o-mini", "claude-haiku-4-5", "gpt-4o-mini"):
        response = await client.post("/v1/chat/completions", json=chat(model), headers=bearer(key))
        assert response.status_code == 200, response.text
        request_ids.append(response.headers["x-request-id"])
    for excluded in (["deepseek"], []):
        response = await client.put("/v1/admin/account-scope", json={"email": email, "excluded_providers": excluded},
                                    headers=admin)
        assert response.status_code == 200, response.text
    assert set(await records_for(gateway, request_ids)) == set(request_ids)

    live = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    scratch = aioredis.Redis.from_url(scratch_url(gateway.redis.url), decode_responses=True)
    try:
        calls = await call_ids(live, set(request_ids))
        audits = await audit_ids(live, account_id)
        assert set(calls) == set(request_ids) and len(audits) == 2
        usage_keys = sorted({account_usage_key(account_id, current_month(ms)) for ms in calls.values()})
        assert sum([int(await live.hget(name, "requests") or 0) for name in usage_keys]) == 3
        # A month still owed to Stripe would be kept whatever its age; this account has none.
        assert await live.hget(cursor_key(account_id), "open_from") is None
        # Each dedupe mark expires when its entry leaves the calls window (set in one script).
        marks = {request_id: await live.pexpiretime(counted_key(request_id)) for request_id in request_ids}
        for request_id, entry_ms in calls.items():
            assert abs(marks[request_id] - (entry_ms + calls_window)) <= 1000, (request_id, marks, calls)

        await copy_keyspace(live, scratch)

        async def state() -> tuple[set[str], int, int, set[str]]:
            """Ours in the copy: calls left, audit entries left, usage counters left, marks left."""
            return (set(await call_ids(scratch, set(request_ids))), len(await audit_ids(scratch, account_id)),
                    sum([await scratch.exists(name) for name in usage_keys]),
                    {r for r in request_ids if await scratch.exists(counted_key(r))})

        async def pass_at(ms: int) -> dict:
            result = await housekeeping_pass(scratch, settings, now=clock(ms))
            assert result is not None  # nobody else runs passes on the copy
            return result

        first_call, last_call = min(calls.values()), max(calls.values())
        first_audit, last_audit = (int(entry_id.split("-")[0]) for entry_id in (audits[0], audits[-1]))
        first_month = current_month(first_call)
        last_month = current_month(last_call)
        usage_kept_until = month_start(months_before(first_month, -settings.usage_retention_months)) * 1000 - 1
        usage_gone_at = month_start(months_before(last_month, -settings.usage_retention_months)) * 1000
        steps = [first_call + calls_window, last_call + calls_window + 1, first_audit + audit_window,
                 last_audit + audit_window + 1, usage_kept_until, usage_gone_at]
        assert steps == sorted(steps), "the windows are expected to nest: calls < audit < usage"

        everything = (set(request_ids), 2, len(usage_keys), set(request_ids))
        assert await state() == everything
        # Just inside the calls window (the oldest call exactly that old): nothing of ours goes.
        await pass_at(steps[0])
        assert await state() == everything
        # Just past it: the calls' entries are gone, and their marks expire by then too.
        await pass_at(steps[1])
        left_calls, left_audit, left_usage, _ = await state()
        assert (left_calls, left_audit, left_usage) == (set(), 2, len(usage_keys))
        for request_id in request_ids:
            expires = await scratch.pexpiretime(counted_key(request_id))
            assert expires == marks[request_id] and expires <= steps[1] + 1000
        # The audit trail: kept just inside its window, gone just past it; counters stay.
        await pass_at(steps[2])
        assert (await state())[1:3] == (2, len(usage_keys))
        await pass_at(steps[3])
        assert (await state())[1:3] == (0, len(usage_keys))
        # The usage counters (accounting): the last millisecond of the last month kept, then gone.
        await pass_at(steps[4])
        assert (await state())[2] == len(usage_keys)
        result = await pass_at(steps[5])
        assert (await state())[2] == 0 and result["trimmed"]["usage"] >= len(usage_keys)

        # The live database was never touched by those passes.
        assert await call_ids(live, set(request_ids)) == calls and await audit_ids(live, account_id) == audits
        # A pass on the live data at the real clock (as the deployment runs it), then the
        # gateway still serves and meters: the next call is recorded and counted.
        for _ in range(50):
            if await housekeeping_pass(live, settings) is not None:
                break
        else:
            raise AssertionError("the deployment's own pass held the housekeeping lock throughout")
        assert await call_ids(live, set(request_ids)) == calls  # all well inside the window
        response = await client.post("/v1/chat/completions", json=chat("gpt-4o-mini"), headers=bearer(key))
        assert response.status_code == 200, response.text
        after = response.headers["x-request-id"]
        assert set(await records_for(gateway, [after])) == {after}
        counter = account_usage_key(account_id, current_month(max((await call_ids(live, {after})).values())))
        counted = sum([int(await live.hget(name, "requests") or 0) for name in {*usage_keys, counter}])
        assert counted == 4
    finally:
        await scratch.flushdb()
        await scratch.aclose()
        await live.aclose()


def test_the_gateways_ray_and_serve_logs_rotate(gateway):
    """The Ray that the gateway started carries the rotation settings ``serve_app.runtime``
    sets, and so does a worker process: its node object is where Serve's replica log file
    handler (``RotatingFileHandler``) takes ``maxBytes`` and ``backupCount`` from."""
    expected = (int(os.environ["RAY_ROTATION_MAX_BYTES"]), int(os.environ["RAY_ROTATION_BACKUP_COUNT"]))
    assert 0 < expected[0] <= 1 << 30 and expected[1] >= 1
    driver = ray._private.worker._global_node
    assert (driver.max_bytes, driver.backup_count) == expected

    @ray.remote(num_cpus=0)
    def in_a_worker() -> tuple[int, int]:
        node = ray._private.worker._global_node
        return node.max_bytes, node.backup_count

    assert ray.get(in_a_worker.remote(), timeout=120) == expected
