"""The limits engine under concurrency and over time, against a real redis-server.

1. Hundreds of concurrent reserve/settle calls from three Redis clients (three replicas), random
   tokens and costs, real usage at most what was reserved: Redis's MONITOR gives the order in
   which the scripts really ran, and a naive model of the issue's rules (lists, no running sums)
   replayed in that order must reach the same verdict on every call: every admitted call fitted,
   every refused one would have overshot, with the same limits named. The settled spend never
   exceeds a budget and no key is admitted more than its RPM.
2. Ten minutes of a test clock, calls arriving at random, some settled late and some never
   (their replica died): every verdict and every Retry-After matches the model, and in every
   60 s window the admitted requests and their tokens stay within RPM and TPM."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from actors.limits.store import WINDOW_MS, LimitStore, Refused, Reserved
from core.limits import Limits


@dataclass
class Reservation:
    key: str
    account: str
    at: int
    expiry: int
    tokens: int
    cost: int
    in_key: bool = True  # still among the key's outstanding reservations
    in_account: bool = True
    tokens_in_window: bool = True  # its TPM entry not yet dropped


class Model:
    """The rules as the issue states them, kept as plainly as possible, replayed one call at a
    time. ``now``: the time the script ran with (0 in the concurrent test: all within a window)."""

    def __init__(self, ttl_ms: int):
        self.ttl_ms = ttl_ms
        self.requests: dict[str, list[int]] = defaultdict(list)
        self.reservations: dict[str, Reservation] = {}
        self.spent: dict[str, int] = defaultdict(int)

    def reserve(self, now: int, key: str, account: str, rid: str, tokens: int, cost: int,
                limits: Limits) -> tuple[set[str], dict[str, float | None]]:
        """(the limits it is over, the wait for the window limits); records it when it fits."""
        cutoff = now - WINDOW_MS
        for r in self.reservations.values():  # what this call's script drops before counting
            if r.expiry <= now:
                r.in_key = r.in_key and r.key != key
                r.in_account = r.in_account and r.account != account
            if r.key == key and r.at <= cutoff:
                r.tokens_in_window = False
        self.requests[key] = [t for t in self.requests[key] if t > cutoff]
        over: set[str] = set()
        waits: dict[str, float | None] = {}
        window = sorted(self.requests[key])
        if limits.rpm is not None and len(window) >= limits.rpm:
            over.add("rpm")
            waits["rpm"] = (window[len(window) - limits.rpm] + WINDOW_MS - now) / 1000
        entries = sorted((r.at, r.tokens) for r in self.reservations.values()
                         if r.key == key and r.tokens_in_window)
        used = sum(t for _, t in entries)
        if limits.tpm is not None and used + tokens > limits.tpm:
            over.add("tpm")
            waits["tpm"] = None
            if tokens <= limits.tpm:
                freed = 0
                for at, t in entries:
                    freed += t
                    if used - freed + tokens <= limits.tpm:
                        waits["tpm"] = (at + WINDOW_MS - now) / 1000
                        break
        key_held = sum(r.cost for r in self.reservations.values() if r.in_key and r.key == key)
        account_held = sum(r.cost for r in self.reservations.values()
                           if r.in_account and r.account == account)
        if limits.key_budget_micro is not None and \
                self.spent[key] + key_held + cost > limits.key_budget_micro:
            over.add("key_budget")
        if limits.account_budget_micro is not None and \
                self.spent[account] + account_held + cost > limits.account_budget_micro:
            over.add("account_budget")
        if not over:
            self.requests[key].append(now)
            self.reservations[rid] = Reservation(key, account, now, now + self.ttl_ms, tokens, cost)
        return over, waits

    def settle(self, now: int, rid: str, tokens: int, cost: int) -> bool:
        r = self.reservations[rid]
        if not r.in_key or now >= r.expiry:
            return False  # settled already, or expired: released
        r.in_key = r.in_account = False
        self.spent[r.key] += cost
        self.spent[r.account] += cost
        if r.tokens_in_window:
            r.tokens = tokens
        return True


def request_id_of(rid: str) -> str:
    return rid.rsplit(".", 1)[0]


async def test_concurrent_replicas_never_overshoot_and_refuse_only_what_would(redis, own_redis):
    replicas = [aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
        own_redis.url, max_connections=32, decode_responses=decode))
                for decode in (True, False, True)]  # the gateway decodes; a bytes client too
    stores = [LimitStore(client, reservation_ttl_s=300) for client in replicas]
    watcher = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    seen_kinds: set[str] = set()
    try:
        # load the scripts first, so MONITOR shows each call exactly once (no NOSCRIPT retry)
        warm = await stores[0].reserve("warm", "warm", Limits(tpm=10, key_budget_micro=10), 1, 1, "w")
        await stores[0].settle(warm, 1, 1)
        for seed in range(3):
            seen_kinds |= await _concurrent_round(seed, replicas[0], stores, watcher)
    finally:
        for client in (*replicas, watcher):
            await client.aclose()
    assert seen_kinds == {"rpm", "tpm", "key_budget", "account_budget"}  # every rule was exercised


async def _concurrent_round(seed: int, client: aioredis.Redis, stores: list[LimitStore],
                            watcher: aioredis.Redis) -> set[str]:
    rng = random.Random(seed)
    account = f"acc{seed}"
    keys = [f"kp{seed}a", f"kp{seed}b"]
    # the rounds make different rules bind: the windows; the budgets; all of them at once
    limits_of = dict(zip(keys, [
        (Limits(rpm=60, account_budget_micro=10**9), Limits(tpm=12_000, account_budget_micro=10**9)),
        (Limits(rpm=1000, key_budget_micro=40_000, account_budget_micro=110_000),
         Limits(tpm=10**6, account_budget_micro=110_000)),
        (Limits(rpm=100, tpm=25_000, key_budget_micro=80_000, account_budget_micro=120_000),
         Limits(rpm=90, tpm=15_000, key_budget_micro=70_000, account_budget_micro=120_000)),
    ][seed], strict=True))
    outcomes: dict[str, Reserved | Refused] = {}
    settled: dict[str, tuple[int, int, bool]] = {}  # request id -> real tokens, cost, counted

    async def call(i: int) -> None:
        request_id = f"s{seed}c{i}"
        key, store = rng.choice(keys), rng.choice(stores)
        tokens, cost = rng.randint(1, 400), rng.randint(1, 2400)
        await asyncio.sleep(rng.random() * 0.05)
        result = await store.reserve(key, account, limits_of[key], tokens, cost, request_id)
        outcomes[request_id] = result
        if isinstance(result, Reserved):
            await asyncio.sleep(rng.random() * 0.02)
            real_tokens, real_cost = rng.randint(0, tokens), rng.randint(0, cost)
            counted = await rng.choice(stores).settle(result, real_tokens, real_cost)
            settled[request_id] = (real_tokens, real_cost, counted)

    sentinel = f"done-{seed}"
    log: list[str] = []
    started = time.monotonic()
    async with watcher.monitor() as monitor:
        async def watch() -> None:
            while True:
                command = await monitor.next_command()
                if command["client_type"] == "lua":
                    continue  # the commands inside a script: the script's own line orders it
                if command["command"] == f"ECHO {sentinel}":
                    return
                log.append(command["command"])

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.05)
        await asyncio.gather(*(call(i) for i in range(300)))
        await client.echo(sentinel)
        await asyncio.wait_for(watching, 30)
    assert time.monotonic() - started < 50  # the model counts every call inside one window

    model = Model(ttl_ms=300_000)
    reserve_sha, settle_sha = stores[0]._reserve.sha, stores[0]._settle.sha
    replayed = 0
    for line in log:
        parts = line.split(" ")
        if parts[0].upper() != "EVALSHA":
            continue
        n = int(parts[2])
        keys_, args = parts[3:3 + n], parts[3 + n:]
        if parts[1] == reserve_sha:
            rid, tokens, cost = args[2], int(args[3]), int(args[4])
            key = keys_[0].split(":")[3]
            over, _ = model.reserve(0, key, account, rid, tokens, cost, limits_of[key])
            outcome = outcomes[request_id_of(rid)]
            if over:
                assert isinstance(outcome, Refused), (rid, over)
                assert set(outcome.kinds) == over, (rid, outcome.kinds, over)
            else:
                assert isinstance(outcome, Reserved), (rid, outcome)
                assert outcome.reservation_id == rid
            replayed += 1
        elif parts[1] == settle_sha:
            rid, real_tokens, real_cost = args[0], int(args[2]), int(args[5])
            assert model.settle(0, rid, real_tokens, real_cost) == settled[request_id_of(rid)][2]
    assert replayed == 300

    # what a user would check: no budget overshot, no key admitted past its RPM
    spent_by_key = defaultdict(int)
    for request_id, (_, real_cost, counted) in settled.items():
        assert counted
        spent_by_key[outcomes[request_id].key_prefix] += real_cost
    for key in keys:
        limits = limits_of[key]
        assert spent_by_key[key] <= (limits.key_budget_micro or 10**9)
        admitted = [o for o in outcomes.values() if isinstance(o, Reserved) and o.key_prefix == key]
        assert len(admitted) <= (limits.rpm or 10**9)
        assert sum(settled[r.reservation_id.rsplit(".", 1)[0]][0] for r in admitted) <= (limits.tpm or 10**9)
        spend = await stores[1].spent(key, account)
        assert (spend.key_spent_micro, spend.key_reserved_micro) == (spent_by_key[key], 0)
        assert spend.key_spent_micro == model.spent[key]
    assert spend.account_spent_micro == sum(spent_by_key.values()) == model.spent[account]
    assert spend.account_spent_micro <= limits.account_budget_micro
    return {kind for o in outcomes.values() if isinstance(o, Refused) for kind in o.kinds}


class Clock:
    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.mark.parametrize("seed", range(4))
async def test_over_minutes_every_verdict_and_wait_matches_the_rules(redis, seed):
    rng = random.Random(seed)
    clock = Clock(1_750_000_000_000 + seed)  # mid-June 2025: one month throughout
    ttl_ms = 20_000
    store = LimitStore(redis, reservation_ttl_s=ttl_ms / 1000, clock=clock)
    model = Model(ttl_ms)
    account = f"acc{seed}"
    keys = {f"kp{seed}a": Limits(rpm=12, tpm=3000, key_budget_micro=60_000, account_budget_micro=110_000),
            f"kp{seed}b": Limits(rpm=8, tpm=2000, account_budget_micro=110_000)}
    pending: list[tuple[int, str, Reserved, int, int]] = []  # due, request id, reservation, real
    admitted: dict[str, list[tuple[int, str]]] = defaultdict(list)  # key -> (time, request id)
    final_tokens: dict[str, int] = {}
    seen: set[str] = set()

    for i in range(700):
        clock.now += rng.randint(1, 2500)
        for item in [p for p in pending if p[0] <= clock.now]:  # settles that are due, in order
            pending.remove(item)
            _, request_id, reserved, real_tokens, real_cost = item
            expected = model.settle(clock.now, reserved.reservation_id, real_tokens, real_cost)
            assert await store.settle(reserved, real_tokens, real_cost) == expected
            if expected:
                final_tokens[request_id] = real_tokens
        key = rng.choice(list(keys))
        limits = keys[key]
        tokens, cost = rng.randint(1, 900), rng.randint(1, 4000)
        request_id = f"r{i}"
        result = await store.reserve(key, account, limits, tokens, cost, request_id)
        rid = result.reservation_id if isinstance(result, Reserved) else f"{request_id}.x"
        over, waits = model.reserve(clock.now, key, account, rid, tokens, cost, limits)
        if over:
            assert isinstance(result, Refused) and set(result.kinds) == over, (i, result, over)
            seen |= over
            if result.kind in waits:
                assert result.retry_after_s == (None if waits[result.kind] is None
                                                else pytest.approx(waits[result.kind]))
            else:  # a budget: the month's end, or never for a call over the whole budget
                assert result.retry_after_s is None or result.retry_after_s > 86400
        else:
            assert isinstance(result, Reserved), (i, result)
            admitted[key].append((clock.now, request_id))
            final_tokens[request_id] = tokens
            if rng.random() < 0.85:  # the rest never settle: their replica died
                due = clock.now + rng.randint(0, int(ttl_ms * 1.2))  # some after the expiry
                pending.append((due, request_id, result, rng.randint(0, tokens), rng.randint(0, cost)))
    assert seen == {"rpm", "tpm", "key_budget", "account_budget"}

    # in every 60 s window (starting at an admitted call): within RPM and TPM
    for key, calls in admitted.items():
        for start, _ in calls:
            inside = [request_id for at, request_id in calls if start <= at < start + WINDOW_MS]
            assert len(inside) <= keys[key].rpm
            assert sum(final_tokens[r] for r in inside) <= keys[key].tpm
    spend = await store.spent(None, account)
    assert spend.account_spent_micro == model.spent[account] <= 110_000
