"""The metering batcher against a real redis-server of this module's own (append-only, fsync
always): batching by size and age, Redis stopped and restarted, Redis paused, the buffer
spilling to disk and back, shutdown. No Ray."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import replace

import pytest
import redis
import redis.asyncio as aioredis

from actors.metering.batcher import Batcher
from actors.metering.record import CallRecord
from actors.metering.usage_store import CALLS_STREAM, UsageStore
from core.redis_conn import connect
from tests.support.call_records import record


@pytest.fixture
async def store(aof_redis, aof_client):
    """The batcher's own connection, as the deployment opens it but with a short reply timeout."""
    client = connect(aof_redis.url, socket_timeout=0.5, retries=0)
    yield UsageStore(client)
    await client.aclose()


class Gate:
    """A store whose Redis can be made unreachable on demand (deterministic outages)."""

    def __init__(self, store: UsageStore):
        self.store = store
        self.open = True

    async def write(self, records: list[CallRecord]) -> int:
        if not self.open:
            raise redis.ConnectionError("unreachable")
        return await self.store.write(records)


async def stream_ids(client: aioredis.Redis) -> list[str]:
    return [entry["request_id"] for _, entry in await client.xrange(CALLS_STREAM)]


async def assert_counted_exactly(client: aioredis.Redis, added: list[CallRecord]) -> None:
    month = await UsageStore(client).month("acct_1", "2026-03")
    assert month["requests"] == len(added)
    assert month["cost_micro_units"] == sum(r.cost_micro_units for r in added)
    assert await client.xlen(CALLS_STREAM) == len(added)
    assert await stream_ids(client) == [r.request_id for r in added]  # in order, once each


async def wait_for(predicate, timeout_s: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError("timed out")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


# ---- batching --------------------------------------------------------------------------------

async def test_a_full_batch_is_written_well_before_max_age(store, aof_client):
    batcher = Batcher(store, max_batch=50, max_age_s=5.0)
    added = [record(cost=i) for i in range(50)]
    batcher.add(added[:30])
    batcher.add(added[30:])
    assert await wait_for(lambda: batcher.written_total == 50, 2.0) < 1.0
    assert batcher.batches_total == 1 and list(batcher.recent_batch_sizes) == [50]
    await assert_counted_exactly(aof_client, added)
    await batcher.aclose()


async def test_a_lone_record_is_written_after_about_max_age(store, aof_client):
    batcher = Batcher(store, max_batch=200, max_age_s=0.2)
    started = time.monotonic()
    batcher.add([record()])
    await asyncio.sleep(0.05)
    assert batcher.written_total == 0  # not before its age
    await wait_for(lambda: batcher.written_total == 1, 2.0)
    assert 0.2 <= time.monotonic() - started < 1.0
    await batcher.aclose()


async def test_flush_and_aclose_write_everything_buffered(store, aof_client):
    batcher = Batcher(store, max_batch=1000, max_age_s=60.0)
    added = [record() for _ in range(123)]
    batcher.add(added)
    assert await batcher.flush(timeout_s=5) == 123
    late = [record() for _ in range(7)]
    batcher.add(late)
    await batcher.aclose()
    assert batcher.written_total == 130 and batcher.spilled_total == 0
    await assert_counted_exactly(aof_client, added + late)
    batcher.add([record()])  # after close: refused loudly, never raised
    assert batcher.dropped_total == 1


async def test_add_never_raises_on_garbage():
    batcher = Batcher(Gate(None), max_age_s=60.0)  # type: ignore[arg-type]
    batcher.add([object(), replace(record(), request_id="")])  # type: ignore[list-item]
    batcher.add(None)  # type: ignore[arg-type]
    assert batcher.dropped_total == 2
    await batcher.aclose(timeout_s=0.1)


# ---- Redis away --------------------------------------------------------------------------------

async def add_for(batcher: Batcher, seconds: float, added: list[CallRecord], during=None) -> None:
    """Add a few records every few ms for ``seconds``; ``during`` runs alongside."""
    side = asyncio.create_task(during()) if during else None
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = [record(cost=rng.randrange(1000)) for _ in range(rng.randint(1, 3))]
        added += batch
        batcher.add(batch)
        await asyncio.sleep(0.005)
    if side:
        await side


async def test_redis_stopped_and_restarted_loses_and_doubles_nothing(aof_redis, store, aof_client):
    batcher = Batcher(store, max_batch=50, max_age_s=0.05)
    added: list[CallRecord] = []

    async def outage() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(aof_redis.stop)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(aof_redis.start)

    await add_for(batcher, 4.5, added, outage)
    await batcher.flush(timeout_s=30)
    assert batcher.failures_total > 0  # the outage was seen
    assert batcher.dropped_total == 0 and batcher.spilled_total == 0
    assert batcher.written_total == len(added)  # each record in exactly one accepted batch
    assert batcher.counted_total <= len(added)  # less if a reply was lost after Redis applied it
    await aof_client.connection_pool.disconnect()  # its connection died with the server
    await assert_counted_exactly(aof_client, added)
    await batcher.aclose()


async def test_a_paused_redis_slower_than_the_timeout_loses_and_doubles_nothing(aof_redis, store, aof_client):
    batcher = Batcher(store, max_batch=50, max_age_s=0.05)
    added: list[CallRecord] = []

    async def pause() -> None:
        await asyncio.sleep(0.5)
        await aof_client.execute_command("CLIENT", "PAUSE", 1500, "WRITE")

    await add_for(batcher, 3.0, added, pause)
    await batcher.flush(timeout_s=30)
    assert batcher.failures_total > 0  # replies were slower than the 0.5 s socket timeout
    assert batcher.dropped_total == 0
    assert batcher.written_total == len(added)
    await assert_counted_exactly(aof_client, added)
    await batcher.aclose()


async def test_a_batch_applied_but_reported_lost_is_retried_and_counted_once(store, aof_client):
    class LostReply(Gate):
        """Redis applies the batch, then the reply is lost (the connection drops)."""

        lost = 0

        async def write(self, records: list[CallRecord]) -> int:
            counted = await self.store.write(records)
            if self.lost < 2:
                self.lost += 1
                raise redis.ConnectionError("reply lost")
            return counted

    batcher = Batcher(LostReply(store), max_batch=10, max_age_s=0.01)
    added = [record() for _ in range(25)]
    batcher.add(added)
    await batcher.flush(timeout_s=10)
    assert batcher.failures_total == 2
    # The first batch went three times; Redis counted it the first time, whose reply was lost.
    assert batcher.written_total == 25 and batcher.counted_total == 15
    await assert_counted_exactly(aof_client, added)
    await batcher.aclose()


# ---- spill -----------------------------------------------------------------------------------

def spilled_lines(folder) -> int:
    return sum(len(p.read_text().splitlines()) for p in folder.rglob("*.jsonl"))


async def test_a_full_buffer_spills_to_disk_and_replays_in_order(store, aof_client, tmp_path, caplog):
    gate = Gate(store)
    gate.open = False
    spill = tmp_path / "spill"
    batcher = Batcher(gate, max_batch=20, max_age_s=0.01, buffer_records=50, spill_dir=spill,
                      retry_max_s=0.2)
    added = [record(cost=i) for i in range(300)]
    with caplog.at_level(logging.WARNING, logger="neuroapi.metering"):
        for i in range(0, 300, 7):
            batcher.add(added[i:i + 7])
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)
    assert batcher.stats()["buffered"] == 50
    assert batcher.spilled_total == 250 and batcher.dropped_total == 0
    assert spilled_lines(spill) == 250 + 50  # the spill, and the write-ahead log of what is in memory
    warnings = [r for r in caplog.records if r.name == "neuroapi.metering" and r.levelno == logging.WARNING]
    assert any("spilled to disk" in r.getMessage() for r in warnings)
    # Loud, but rate-limited and with counts only.
    assert len([r for r in warnings if "spilled" in r.getMessage()]) == 1
    assert not any(r.request_id in m for r in added for m in caplog.messages)

    gate.open = True
    later = [record(cost=1) for _ in range(30)]
    batcher.add(later)  # behind the spilled ones, though memory has room again
    await batcher.flush(timeout_s=20)
    assert batcher.counted_total == 330 and batcher.dropped_total == 0
    await assert_counted_exactly(aof_client, added + later)
    await batcher.aclose()
    assert not list(spill.rglob("*.jsonl")) and not list(spill.iterdir())  # replayed, deleted


async def test_a_failed_spill_drops_and_says_so(store, aof_client, tmp_path, caplog):
    gate = Gate(store)
    gate.open = False
    (tmp_path / "a-file").write_text("")
    batcher = Batcher(gate, max_batch=5, max_age_s=0.01, buffer_records=10,
                      spill_dir=tmp_path / "a-file" / "spill", retry_max_s=0.2)
    added = [record() for _ in range(30)]
    with caplog.at_level(logging.WARNING, logger="neuroapi.metering"):
        batcher.add(added)
    assert batcher.dropped_total == 20 and batcher.spilled_total == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("20 call records DROPPED" in m for m in errors)
    gate.open = True
    await batcher.flush(timeout_s=10)
    await assert_counted_exactly(aof_client, added[:10])
    await batcher.aclose()


async def test_shutdown_with_redis_away_spills_and_the_next_batcher_replays(store, aof_client, tmp_path):
    gate = Gate(store)
    gate.open = False
    spill = tmp_path / "spill"
    first = Batcher(gate, max_batch=10, max_age_s=0.01, buffer_records=25, spill_dir=spill, retry_max_s=0.2)
    added = [record(cost=i) for i in range(40)]
    first.add(added)  # 25 in memory, 15 spilled
    # A live batcher's files are its own: a second one started now adopts nothing.
    bystander = Batcher(Gate(store), spill_dir=spill)
    bystander.start()
    assert bystander.stats()["pending"] == 0
    await first.aclose(timeout_s=0.3)
    assert first.spilled_total == 40 and first.dropped_total == 0
    assert spilled_lines(spill) == 40
    # A line cut short (a crash mid-write) is skipped and counted as dropped, not fatal.
    segment = max(spill.rglob("*.jsonl"), key=lambda p: int(p.stem))
    with segment.open("a") as handle:
        handle.write(json.dumps(record().to_fields())[:40])

    second = Batcher(store, max_batch=10, max_age_s=0.01, spill_dir=spill)
    second.start()
    assert second.stats()["pending"] == 41
    await second.flush(timeout_s=10)
    assert second.written_total == 40 and second.dropped_total == 1
    await assert_counted_exactly(aof_client, added)  # memory's 25 first, then the spill's 15
    await second.aclose()
    await bystander.aclose()
    assert not list(spill.rglob("*.jsonl"))


async def test_shutdown_while_retrying_a_failed_write_ends_and_spills(store, tmp_path):
    """A stop that lands in the retry back-off must end the loop (Python 3.11's ``wait_for``
    swallows that cancel), not spin on the failing write forever and hang the replica's exit."""
    gate = Gate(store)
    gate.open = False
    batcher = Batcher(gate, max_age_s=0.0, spill_dir=tmp_path / "spill", retry_initial_s=5.0)
    batcher.add([record() for _ in range(5)])
    await wait_for(lambda: batcher.failures_total == 1, 10.0)  # now in the 5 s back-off
    closing = asyncio.create_task(batcher.aclose(timeout_s=0.05))
    done, _ = await asyncio.wait({closing}, timeout=10)
    assert closing in done and batcher.failures_total < 10
    assert batcher.spilled_total == 5 and spilled_lines(tmp_path / "spill") == 5
