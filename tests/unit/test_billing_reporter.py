"""The usage reporter against a real redis-server of this module's own and a meter-event sink that
deduplicates identifiers the way Stripe does: what customers are billed equals what they used
(above the free part), exactly, through crashes, outages, month ends and concurrent reporters."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from actors.billing.reporter import (
    Subscribed,
    UsageReporter,
    ledger_key,
    month_start,
)
from actors.billing.stripe_api import BillingRejected, BillingUnavailable
from actors.metering.usage_store import UsageStore
from core.money import MICRO
from tests.support.call_records import MARCH, record

EVENT = "neuroapi_cost_units"
MARCH_NOW = MARCH // 1000  # 2026-03-15T12:00:00Z
APRIL = month_start("2026-04")


class CrashAfterAccept(RuntimeError):
    """The reporter's process dying after Stripe accepted, before it recorded."""


class MeterSink:
    """Stripe's meter events as far as billing goes: an identifier counts once (a repeat returns
    normally, as StripeBilling.send_meter_event does for Stripe's duplicate answer)."""

    def __init__(self):
        self.accepted: dict[str, tuple[str, int, int]] = {}  # identifier -> customer, value, ts
        self.attempts: list[str] = []
        self.mismatched: list[str] = []  # a resend that differs from what was accepted
        self.down = False
        self.reject = False
        self.crash_after_accept = 0
        self.delay_s = 0.0

    async def send_meter_event(self, event_name, customer_id, value, identifier, timestamp):
        assert event_name == EVENT and isinstance(value, int) and value > 0
        self.attempts.append(identifier)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            raise BillingUnavailable("Stripe unreachable (send meter event): connection refused")
        if self.reject:
            raise BillingRejected("Stripe send meter event failed: HTTP 400", 400)
        if identifier in self.accepted:
            if self.accepted[identifier] != (customer_id, value, timestamp):
                self.mismatched.append(identifier)
            return
        self.accepted[identifier] = (customer_id, value, timestamp)
        if self.crash_after_accept:
            self.crash_after_accept -= 1
            raise CrashAfterAccept

    def billed_units(self, customer_id: str) -> int:
        return sum(value for customer, value, _ in self.accepted.values() if customer == customer_id)


class Accounts:
    def __init__(self, *accounts: Subscribed):
        self.accounts = list(accounts)

    async def subscribed(self) -> list[Subscribed]:
        return list(self.accounts)


ALICE = Subscribed("acct_alice", "cus_alice", "active", "2026-03")


async def use(redis, account_id: str, cost: int, timestamp_ms: int = MARCH) -> None:
    await UsageStore(redis).write([record(account_id, cost=cost, timestamp_ms=timestamp_ms)])


def reporter(redis, sink, *accounts: Subscribed, free_micro: int = 0, **options) -> UsageReporter:
    return UsageReporter(redis, sink, EVENT, free_micro, Accounts(*(accounts or (ALICE,))), **options)


async def unreported(rep: UsageReporter, account: Subscribed, *months: str) -> int:
    return sum([await rep.owed_micro(account, month) for month in months or ("2026-03",)])


def sent(events) -> list:
    return [event for event in events if event.outcome == "sent"]


async def test_values_sent_plus_the_carried_remainder_equal_the_metered_cost_exactly(redis):
    sink, rng = MeterSink(), random.Random(17)
    rep, total = reporter(redis, sink), 0
    for round_ in range(12):
        for _ in range(rng.randint(0, 5)):
            cost = rng.choice([1, 7, 999_999, 1_000_000, 1_000_001, rng.randint(1, 5_000_000)])
            await use(redis, ALICE.account_id, cost)
            total += cost
        events = await rep.report_once(MARCH_NOW + round_ * 60)
        owed = await unreported(rep, ALICE)
        assert sink.billed_units("cus_alice") * MICRO + owed == total
        assert 0 <= owed < MICRO  # only the sub-unit remainder waits
        assert sum(event.value for event in sent(events)) <= total // MICRO
    assert sink.billed_units("cus_alice") == total // MICRO > 0
    assert len(sink.attempts) == len(sink.accepted)  # nothing was sent twice
    # A pass with no new usage sends nothing.
    assert await rep.report_once(MARCH_NOW + 3600) == []


async def test_a_crash_after_stripe_accepted_resends_the_same_identifier_and_counts_once(redis):
    sink = MeterSink()
    rep = reporter(redis, sink)
    await use(redis, ALICE.account_id, 3_400_000)
    sink.crash_after_accept = 1
    with pytest.raises(CrashAfterAccept):
        await rep.report_once(MARCH_NOW)
    [(first_id, (_, value, _))] = sink.accepted.items()
    assert value == 3 and (await rep.ledger(ALICE.account_id, "2026-03")).pending_value == 3

    await use(redis, ALICE.account_id, 2_000_000)  # usage keeps arriving meanwhile
    events = await rep.report_once(MARCH_NOW + 60)
    assert [event.identifier for event in sent(events)][0] == first_id  # resent verbatim
    assert Counter(sink.attempts)[first_id] == 2 and not sink.mismatched
    assert sink.billed_units("cus_alice") == 5  # 3 once, then 2 more: not 8
    assert sink.billed_units("cus_alice") * MICRO + await unreported(rep, ALICE) == 5_400_000


async def test_stripe_failing_for_several_passes_then_recovering_loses_and_doubles_nothing(redis):
    sink = MeterSink()
    bob = Subscribed("acct_bob", "cus_bob", "past_due", "2026-03")
    rep, total = reporter(redis, sink, ALICE, bob), 0
    sink.down = True
    for round_ in range(4):
        await use(redis, ALICE.account_id, 1_300_000)
        await use(redis, bob.account_id, 2_000_000)
        total += 1_300_000
        events = await rep.report_once(MARCH_NOW + round_ * 60)
        assert [event.outcome for event in events] == ["unavailable"]  # the pass stops at once
    assert sink.accepted == {} and set(sink.attempts) == {"acct_alice:2026-03:0"}

    sink.down = False
    events = await rep.report_once(MARCH_NOW + 600)
    # The pending event goes first with what it was claimed with, then the usage since.
    assert [(e.identifier, e.value) for e in sent(events)] == [
        ("acct_alice:2026-03:0", 1), ("acct_alice:2026-03:1", 4), ("acct_bob:2026-03:0", 8)]
    assert not sink.mismatched
    assert sink.billed_units("cus_alice") * MICRO + await unreported(rep, ALICE) == total
    assert sink.billed_units("cus_bob") == 8

    # A refusal that retrying will not fix keeps the usage pending rather than dropping it.
    await use(redis, ALICE.account_id, 1_000_000)
    sink.reject = True
    assert [e.outcome for e in await rep.report_once(MARCH_NOW + 700)] == ["rejected"]
    sink.reject = False
    assert [e.value for e in sent(await rep.report_once(MARCH_NOW + 800))] == [1]
    assert sink.billed_units("cus_alice") * MICRO + await unreported(rep, ALICE) == total + 1_000_000


async def test_usage_in_the_free_allowance_and_before_subscribing_is_not_billed(redis):
    sink = MeterSink()
    february = MARCH - 30 * 86400 * 1000
    # Carol subscribed in March after using 5 cost_units there (and some in February).
    carol = Subscribed("acct_carol", "cus_carol", "active", "2026-03", unbilled_micro=5_000_000)
    dave = Subscribed("acct_dave", "cus_dave", "trialing", "2026-03")  # under the allowance
    gone = Subscribed("acct_gone", "cus_gone", "canceled", "2026-03")
    bare = Subscribed("acct_bare", "", "active", "2026-03")  # no customer yet
    undated = Subscribed("acct_undated", "cus_undated", "active", "")  # when it began: unknown
    for account in (carol, gone, bare, undated):
        await use(redis, account.account_id, 9_000_000, february)
        await use(redis, account.account_id, 9_000_000)
    await use(redis, dave.account_id, 2_999_999)
    rep = reporter(redis, sink, carol, dave, gone, bare, undated, free_micro=3_000_000)
    await rep.report_once(MARCH_NOW)
    # Carol: 9 used in March - max(3 free, 5 before subscribing) = 4; February never.
    assert {i: v for i, (_, v, _) in sink.accepted.items()} == {"acct_carol:2026-03:0": 4}

    await use(redis, dave.account_id, 1_000_002)  # Dave is now 1.000001 over the allowance
    await rep.report_once(MARCH_NOW + 60)
    assert sink.billed_units("cus_dave") == 1
    assert await unreported(rep, dave) == 1
    assert sink.billed_units("cus_gone") == sink.billed_units("") == 0


async def test_two_reporters_at_once_never_bill_twice(redis):
    sink = MeterSink()
    sink.delay_s = 0.05
    accounts = [Subscribed(f"acct_{n}", f"cus_{n}", "active", "2026-03") for n in range(4)]
    for account in accounts:
        await use(redis, account.account_id, 2_500_000)
    first, second = reporter(redis, sink, *accounts), reporter(redis, sink, *accounts)
    results = await asyncio.gather(first.report_once(MARCH_NOW), second.report_once(MARCH_NOW))
    assert sorted(len(events) for events in results) == [0, 4]  # one leader
    assert len(sink.attempts) == 4 and all(sink.billed_units(a.customer_id) == 2 for a in accounts)

    # A leader whose lease ran out mid-send (a stalled process): the next one resends the same
    # identifier with the same value, and the ledger records it once.
    for account in accounts:
        await use(redis, account.account_id, 1_000_000)
    sink.delay_s = 0.2
    slow = reporter(redis, sink, *accounts, lock_ms=30)

    async def later():
        await asyncio.sleep(0.1)
        return await second.report_once(MARCH_NOW + 60)

    await asyncio.gather(slow.report_once(MARCH_NOW + 60), later())
    assert Counter(sink.attempts)["acct_0:2026-03:1"] == 2 and not sink.mismatched
    for account in accounts:
        assert sink.billed_units(account.customer_id) == 3
        ledger = await first.ledger(account.account_id, "2026-03")
        assert ledger.reported_micro == 3 * MICRO and ledger.pending_value is None


async def test_a_month_end_remainder_is_carried_into_the_next_month_not_rounded(redis):
    sink = MeterSink()
    rep = reporter(redis, sink, close_after_s=3600)
    both = ("2026-03", "2026-04")

    async def exact(total):
        assert sink.billed_units("cus_alice") * MICRO + await unreported(rep, ALICE, *both) == total

    await use(redis, ALICE.account_id, 2_500_000)
    await rep.report_once(APRIL - 60)  # the last pass of March
    assert sink.billed_units("cus_alice") == 2 and await unreported(rep, ALICE) == 500_000
    # Usage for March still arriving just after midnight is reported as March's.
    await use(redis, ALICE.account_id, 700_000, (APRIL - 1) * 1000)
    await rep.report_once(APRIL + 600)
    assert list(sink.accepted)[-1] == "acct_alice:2026-03:1"
    assert await unreported(rep, ALICE) == 200_000
    await exact(3_200_000)

    # An hour after March ended its remainder moves to April: billed there, never rounded away.
    await rep.report_once(APRIL + 3600 + 60)
    assert await unreported(rep, ALICE) == 0
    assert await unreported(rep, ALICE, "2026-04") == 200_000
    assert (await redis.hgetall(ledger_key(ALICE.account_id, "2026-03")))["carried_out_micro"] == "200000"
    await use(redis, ALICE.account_id, 900_000, (APRIL + 7200) * 1000)
    await rep.report_once(APRIL + 7200 + 60)
    assert list(sink.accepted)[-1] == "acct_alice:2026-04:0"
    assert sink.accepted["acct_alice:2026-04:0"][1] == 1  # 0.2 carried + 0.9
    await exact(4_100_000)

    # Late March usage after March closed: its fraction is carried on too.
    await use(redis, ALICE.account_id, 300_000, (APRIL - 1) * 1000)
    await rep.report_once(APRIL + 86400)
    assert await unreported(rep, ALICE) == 0
    assert await unreported(rep, ALICE, "2026-04") == 400_000
    await exact(4_400_000)
    assert len(sink.attempts) == len(sink.accepted)


class StalledUsage(UsageStore):
    """A reporter stalled (a long GC pause) between reading its ledger and claiming an event."""

    def __init__(self, redis, stall_s: float):
        super().__init__(redis)
        self.stall_s = stall_s

    async def month(self, account_id, month):
        if self.stall_s:
            stall, self.stall_s = self.stall_s, 0.0
            await asyncio.sleep(stall)
        return await super().month(account_id, month)


async def test_a_stalled_reporter_cannot_claim_over_what_another_already_reported(redis):
    sink = MeterSink()
    await use(redis, ALICE.account_id, 2_000_000)
    stalled = reporter(redis, sink, lock_ms=30, usage=StalledUsage(redis, 0.2))
    other = reporter(redis, sink)

    async def meanwhile():
        await asyncio.sleep(0.1)  # the stalled one's lease has run out: this one leads
        assert [e.value for e in sent(await other.report_once(MARCH_NOW))] == [2]
        await use(redis, ALICE.account_id, 1_500_000)

    await asyncio.gather(stalled.report_once(MARCH_NOW), meanwhile())
    # The stalled reporter read "nothing reported yet": it must not claim 3 under the used
    # identifier (Stripe would drop it as a duplicate while the ledger counted it).
    assert not sink.mismatched
    assert sink.accepted["acct_alice:2026-03:1"][1] == 1
    assert sink.billed_units("cus_alice") * MICRO + await unreported(other, ALICE) == 3_500_000
