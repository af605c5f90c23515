"""The ingress's write-ahead log of call records: a replica killed with records unshipped (or
shipped without an answer) loses none of them and counts none twice; past its memory bound it
hands records to the batcher's spill instead of dropping them. Real redis-server, no Ray."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from actors.metering.batcher import Batcher
from actors.metering.shipper import RecordShipper
from actors.metering.spill import SpillFiles
from actors.metering.usage_store import CALLS_STREAM, UsageStore
from tests.support.call_records import record

REPO = Path(__file__).resolve().parents[2]

# A replica's life in a child process: one batch acknowledged, one written to Redis whose answer
# never came (the batcher restarting), five records never shipped, then SIGKILL: no cleanup runs.
DYING_REPLICA = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    from actors.metering.spill import SpillFiles
    from core.redis_conn import connect
    from actors.metering.usage_store import UsageStore
    from actors.metering.shipper import RecordShipper
    from tests.support.call_records import record

    class Batcher:
        def __init__(self, store):
            self.store, self.record, self.calls = store, self, 0
        async def remote(self, batch):
            self.calls += 1
            await self.store.write(batch)
            if self.calls == 2:
                raise ConnectionError("written, but the answer was lost")

    async def main(spill, redis_url, with_wal):
        redis = connect(redis_url)
        wal = SpillFiles(Path(spill)) if with_wal == "1" else None
        shipper = RecordShipper(Batcher(UsageStore(redis)), wal=wal)
        for n in range(10):
            shipper.add(record(request_id=f"r{n}"))
        await shipper.ship()
        for n in range(10, 20):
            shipper.add(record(request_id=f"r{n}"))
        await shipper.ship()
        for n in range(20, 25):
            shipper.add(record(request_id=f"r{n}"))
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main(*sys.argv[1:]))
""")


def run_dying_replica(spill: Path, redis_url: str, with_wal: bool = True) -> None:
    child = subprocess.run([sys.executable, "-c", DYING_REPLICA, str(spill), redis_url, "1" if with_wal else "0"],
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]


async def counted(redis) -> tuple[int, list[str]]:
    month = await UsageStore(redis).month("acct_1", "2026-03")
    return month["requests"], sorted(e["request_id"] for _, e in await redis.xrange(CALLS_STREAM))


def log_lines(spill: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in spill.rglob("*.jsonl"))


async def test_a_killed_replicas_records_are_replayed_and_counted_exactly_once(redis, own_redis, tmp_path):
    spill = tmp_path / "metering-spill"
    run_dying_replica(spill, own_redis.url)
    assert await counted(redis) == (20, sorted(f"r{n}" for n in range(20)))  # 5 lost so far
    assert log_lines(spill) == 15  # the unanswered batch and the unshipped records; not the acknowledged one

    batcher = Batcher(UsageStore(redis), spill_dir=spill)  # as the next batcher (or a live one, below)
    batcher.start()
    await batcher.flush(timeout_s=10)
    assert await counted(redis) == (25, sorted(f"r{n}" for n in range(25)))
    assert (batcher.written_total, batcher.counted_total, batcher.dropped_total) == (15, 5, 0)
    await batcher.aclose()
    assert log_lines(spill) == 0


async def test_without_the_log_a_killed_replica_loses_its_unshipped_records(redis, own_redis, tmp_path):
    """What the log is for (and what this module's other tests would see without it)."""
    spill = tmp_path / "metering-spill"
    run_dying_replica(spill, own_redis.url, with_wal=False)
    batcher = Batcher(UsageStore(redis), spill_dir=spill)
    batcher.start()
    await batcher.flush(timeout_s=10)
    assert (await counted(redis))[0] == 20
    await batcher.aclose()


async def test_a_running_batcher_adopts_the_log_of_a_replica_that_dies_meanwhile(redis, own_redis, tmp_path):
    spill = tmp_path / "metering-spill"
    batcher = Batcher(UsageStore(redis), spill_dir=spill, adopt_every_s=0.05)
    batcher.start()
    run_dying_replica(spill, own_redis.url)
    for _ in range(200):
        if (await counted(redis))[0] == 25:
            break
        await asyncio.sleep(0.05)
    assert await counted(redis) == (25, sorted(f"r{n}" for n in range(25)))
    await batcher.aclose()


class FlakyBatcher:
    """The metadata batcher's handle, over a real ``Batcher``; unreachable while ``down``."""

    def __init__(self, batcher: Batcher):
        self.batcher, self.record, self.down = batcher, self, False

    async def remote(self, batch):
        if self.down:
            raise ConnectionError("batcher restarting")
        self.batcher.add(batch)


async def test_acknowledged_batches_leave_nothing_in_the_log(redis, tmp_path):
    spill = tmp_path / "metering-spill"
    batcher = Batcher(UsageStore(redis), spill_dir=spill)
    shipper = RecordShipper(FlakyBatcher(batcher), wal=SpillFiles(spill))
    for n in range(30):
        shipper.add(record(request_id=f"r{n}"))
    assert log_lines(spill) == 30
    (replica_log,) = [p for p in spill.iterdir() if p.is_dir()]
    await shipper.ship()
    assert log_lines(replica_log) == 0
    assert log_lines(spill) == 30  # now in the batcher's own log, until written
    await shipper.aclose()
    await batcher.flush(timeout_s=10)
    assert (await counted(redis))[0] == 30
    await batcher.aclose()
    assert not list(spill.rglob("*.jsonl"))


async def test_past_its_memory_bound_the_ingress_hands_records_to_the_batcher_instead_of_dropping(redis, tmp_path):
    spill = tmp_path / "metering-spill"
    batcher = Batcher(UsageStore(redis), spill_dir=spill, adopt_every_s=0.05)
    batcher.start()
    handle = FlakyBatcher(batcher)
    handle.down = True
    shipper = RecordShipper(handle, max_unshipped=40, wal=SpillFiles(spill))
    for n in range(100):
        shipper.add(record(request_id=f"r{n}"))
    await shipper.ship()  # fails: the batcher is away
    assert shipper.dropped == 0 and shipper.handed_off == 82  # two hand-offs of 41
    handle.down = False
    await shipper.aclose()
    for _ in range(200):
        if (await counted(redis))[0] == 100:
            break
        await asyncio.sleep(0.05)
    assert await counted(redis) == (100, sorted(f"r{n}" for n in range(100)))
    await batcher.aclose()


async def test_a_graceful_stop_with_the_batcher_away_leaves_its_records_for_replay(redis, tmp_path):
    spill = tmp_path / "metering-spill"
    handle = FlakyBatcher(None)
    handle.down = True
    shipper = RecordShipper(handle, wal=SpillFiles(spill))
    shipper.start()
    for n in range(7):
        shipper.add(record(request_id=f"r{n}"))
    await shipper.aclose()
    batcher = Batcher(UsageStore(redis), spill_dir=spill)
    batcher.start()
    await batcher.flush(timeout_s=10)
    assert (await counted(redis))[0] == 7
    await batcher.aclose()


# The batcher's side: a batcher in a child process takes (acknowledges) 30 records; the first 10
# are written, the next 15 are applied by Redis but the reply never comes (Redis slow), the last
# 5 wait in memory; then SIGKILL. Nothing but its write-ahead log outlives it.
DYING_BATCHER = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    from actors.metering.batcher import Batcher
    from core.redis_conn import connect
    from actors.metering.usage_store import UsageStore
    from tests.support.call_records import record

    class Stuck:
        def __init__(self, store):
            self.store, self.writes, self.stuck = store, 0, asyncio.Event()
        async def write(self, batch):
            self.writes += 1
            counted = await self.store.write(batch)
            if self.writes > 1:
                self.stuck.set()
                await asyncio.Event().wait()  # the reply never comes
            return counted

    async def main(spill, redis_url, memory_log):
        store = Stuck(UsageStore(connect(redis_url)))
        batcher = Batcher(store, max_age_s=0.01, spill_dir=Path(spill), memory_log=memory_log == "1")
        batcher.add([record(request_id=f"b{n}") for n in range(10)])
        await batcher.flush(timeout_s=10)
        batcher.add([record(request_id=f"b{n}") for n in range(10, 25)])
        await asyncio.wait_for(store.stuck.wait(), 10)
        batcher.add([record(request_id=f"b{n}") for n in range(25, 30)])
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main(*sys.argv[1:]))
""")


def run_dying_batcher(spill: Path, redis_url: str, memory_log: bool = True) -> None:
    child = subprocess.run([sys.executable, "-c", DYING_BATCHER, str(spill), redis_url, "1" if memory_log else "0"],
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]


async def batcher_counted(redis) -> tuple[int, list[str]]:
    month = await UsageStore(redis).month("acct_1", "2026-03")
    return month["requests"], sorted(e["request_id"] for _, e in await redis.xrange(CALLS_STREAM))


async def test_a_killed_batchers_acknowledged_records_are_replayed_and_counted_exactly_once(redis, own_redis, tmp_path):
    spill = tmp_path / "metering-spill"
    run_dying_batcher(spill, own_redis.url)
    assert (await batcher_counted(redis))[0] == 25  # the last 5 are only on disk
    assert log_lines(spill) == 20  # the unanswered batch and memory; not the written batch

    batcher = Batcher(UsageStore(redis), spill_dir=spill)  # the restarted replica
    batcher.start()
    await batcher.flush(timeout_s=10)
    assert await batcher_counted(redis) == (30, sorted(f"b{n}" for n in range(30)))
    assert (batcher.written_total, batcher.counted_total, batcher.dropped_total) == (20, 5, 0)
    await batcher.aclose()
    assert log_lines(spill) == 0


async def test_without_its_log_a_killed_batcher_loses_what_it_acknowledged(redis, own_redis, tmp_path):
    """What the batcher's log is for."""
    spill = tmp_path / "metering-spill"
    run_dying_batcher(spill, own_redis.url, memory_log=False)
    batcher = Batcher(UsageStore(redis), spill_dir=spill)
    batcher.start()
    await batcher.flush(timeout_s=10)
    assert (await batcher_counted(redis))[0] == 25
    await batcher.aclose()


async def test_a_live_batcher_deletes_its_log_once_records_are_written(redis, tmp_path):
    spill = tmp_path / "metering-spill"
    batcher = Batcher(UsageStore(redis), max_age_s=60.0, spill_dir=spill)
    batcher.add([record(request_id=f"r{n}") for n in range(12)])
    assert log_lines(spill) == 12  # on disk before add returned
    await batcher.flush(timeout_s=10)
    assert log_lines(spill) == 0  # while running: the log holds only what waits in memory
    batcher.add([record(request_id=f"r{n}") for n in range(12, 15)])
    await batcher.aclose()
    assert (await batcher_counted(redis))[0] == 15 and not list(spill.iterdir())
