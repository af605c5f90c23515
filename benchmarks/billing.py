"""What billing costs: the ingress's gating check per inference call, and the usage reporter's
throughput per pass.

    .venv/bin/python -m benchmarks.billing [--accounts 200]

In process (no Ray), against a real redis-server and the local Stripe-compatible server
(tests/support/stripe_server.py) over HTTP with the real stripe SDK:

- gate: ``BillingGate.check`` for an account whose decision is in memory (every call but the
  first after a webhook), for one on its free allowance, and for a decision read from Redis;
  "billing off" is no call at all, so the first two rows are what billing adds to a request.
- reporter: one ``report_once`` pass over N subscribed accounts that each have new usage (one
  meter event each), then a pass with nothing new."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from actors.accounts.store import AccountStore, account_usage_key
from actors.billing.reporter import UsageReporter
from actors.billing.service import StoredSubscriptions
from actors.billing.store import BillingState, BillingStore
from actors.billing.stripe_api import StripeBilling
from actors.metering.record import current_month
from actors.metering.usage_store import UsageStore
from serve_app.callers.billing_gate import BillingGate
from tests.support.redis_servers import start_redis
from tests.support.stripe_server import SECRET_KEY, FakeStripe

CHECKS = 20_000


class FixedStates:
    def __init__(self, state: BillingState):
        self.state_of = state

    async def state(self, account_id: str) -> BillingState:
        return self.state_of


async def check_us(gate: BillingGate, account_id: str, invalidate: bool = False) -> float:
    samples = []
    for _ in range(CHECKS if not invalidate else 2_000):
        if invalidate:
            gate.invalidate(account_id)
        started = time.perf_counter()
        await gate.check(account_id)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


async def subscribed_accounts(redis, n: int) -> list[str]:
    store, accounts = BillingStore(redis), AccountStore(redis)
    month = current_month(int(time.time() * 1000))
    ids = []
    for i in range(n):
        account = await accounts.create(f"bench-{i}@example.com")
        await store.set_customer(account.id, f"cus_bench{i}")
        await redis.hset(f"neuroapi:billing:{account.id}", mapping={
            "status": "active", "status_at": "1", "status_since": "1", "billed_from_month": month,
            "billed_from_micro": "0"})
        await redis.hincrby(account_usage_key(account.id, month), "cost_micro_units", 3_500_000)
        ids.append(account.id)
    return ids


async def main(accounts: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = start_redis(Path(folder))
        stripe_server = FakeStripe().start()
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            usage = UsageStore(redis)
            active = BillingGate(FixedStates(BillingState(customer_id="c", status="active")), usage, 10**12, 3600)
            free = BillingGate(FixedStates(BillingState()), usage, 10**12, 3600, refresh_s=3600)
            rows = [("gate: subscribed, decision in memory", await check_us(active, "acct_a")),
                    ("gate: free allowance, in memory", await check_us(free, "acct_f")),
                    ("gate: decision read from Redis", await check_us(free, "acct_f", invalidate=True))]
            ids = await subscribed_accounts(redis, accounts)
            for customer in range(accounts):
                stripe_server.customers[f"cus_bench{customer}"] = {"id": f"cus_bench{customer}", "object": "customer"}
            stripe = StripeBilling(SECRET_KEY, stripe_server.url)
            reporter = UsageReporter(redis, stripe, "neuroapi_cost_units", 0, StoredSubscriptions(BillingStore(redis)))
            started = time.perf_counter()
            sent = await reporter.report_once()
            first_s = time.perf_counter() - started
            started = time.perf_counter()
            await reporter.report_once()
            idle_s = time.perf_counter() - started
            await stripe.aclose()
            assert sum(s.value for s in sent if s.outcome == "sent") == 3 * len(ids)
        finally:
            await redis.aclose()
            stripe_server.stop()
            server.process.terminate()
    print(f"{'measure':45s} {'value':>14s}")
    for name, us in rows:
        print(f"{name:45s} {us:11.2f} µs")
    print(f"{'reporter: pass, each account one meter event':45s} {accounts / first_s:9.0f} acct/s")
    print(f"{'reporter: pass, nothing new':45s} {accounts / idle_s:9.0f} acct/s")
    print(f"({accounts} accounts; gate medians over {CHECKS} checks; billing off = no check)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=200)
    asyncio.run(main(parser.parse_args().accounts))
