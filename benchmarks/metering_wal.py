"""What the ingress's write-ahead log of call records costs, per record, on this machine:

    .venv/bin/python -m benchmarks.metering_wal [--records 50000] [--batch 40]

Times ``RecordShipper.add`` (on the request's path) without and with the log, and a shipped
batch's acknowledgement (seal and delete its segment: off the request's path, once per batch).
The batcher is a stub that answers at once, so only the shipper's own work is measured.
Then the metadata batcher's own log: ``Batcher.add`` of one received batch (before it answers)
and writing that batch (a store that answers at once), without and with the log."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from actors.metering.batcher import Batcher
from actors.metering.record import CallRecord
from actors.metering.shipper import RecordShipper
from actors.metering.spill import SpillFiles


class _Batcher:
    def __init__(self):
        self.record = self

    async def remote(self, batch):
        return None


def _records(count: int) -> list[CallRecord]:
    return [CallRecord(
        request_id=str(uuid.uuid4()), timestamp_ms=1_772_000_000_000, key_prefix="neuro_abcd1234",
        account_id="acct_0123456789abcdef", status=200, mode="fast", backend="openai", model="gpt-4o-mini",
        prompt_tokens=120, completion_tokens=340, estimated=False, cost_micro_units=222_000_000,
        request_bytes=512, response_bytes=1400) for _ in range(count)]


async def _run(records: list[CallRecord], batch: int, wal_dir: Path | None) -> tuple[float, float]:
    """(µs per add, µs per acknowledged batch), medians over batches."""
    shipper = RecordShipper(_Batcher(), wal=SpillFiles(wal_dir) if wal_dir else None)
    adds, ships = [], []
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        began = time.perf_counter()
        for record in chunk:
            shipper.add(record)
        adds.append((time.perf_counter() - began) / len(chunk) * 1e6)
        began = time.perf_counter()
        await shipper.ship()
        ships.append((time.perf_counter() - began) * 1e6)
    await shipper.aclose()
    return statistics.median(adds), statistics.median(ships)


class _Store:
    async def write(self, records):
        return len(records)


async def _run_batcher(records: list[CallRecord], batch: int, spill: Path | None) -> tuple[float, float]:
    """(µs per received batch in ``add``, µs per batch written), medians."""
    batcher = Batcher(_Store(), max_age_s=3600.0, spill_dir=spill, memory_log=spill is not None)
    adds, writes = [], []
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        began = time.perf_counter()
        batcher.add(chunk)
        adds.append((time.perf_counter() - began) * 1e6)
        began = time.perf_counter()
        await batcher.flush()
        writes.append((time.perf_counter() - began) * 1e6)
    await batcher.aclose()
    return statistics.median(adds), statistics.median(writes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=40, help="records per shipped batch (0.2 s at 200 req/s)")
    args = parser.parse_args()
    records = _records(args.records)
    with tempfile.TemporaryDirectory() as folder:
        rows = [("memory only (before)", *asyncio.run(_run(records, args.batch, None))),
                ("memory + write-ahead log", *asyncio.run(_run(records, args.batch, Path(folder) / "spill")))]
    print(f"{args.records} records, batches of {args.batch}, medians")
    print(f"| {'shipper':<26} | {'add() µs/record':>15} | {'ship() µs/batch':>15} |")
    print(f"| {'-' * 26} | {'-' * 15}:| {'-' * 15}:|")
    for name, add_us, ship_us in rows:
        print(f"| {name:<26} | {add_us:>15.2f} | {ship_us:>15.1f} |")
    with tempfile.TemporaryDirectory() as folder:
        rows = [("memory only (before)", *asyncio.run(_run_batcher(records, args.batch, None))),
                ("memory + write-ahead log", *asyncio.run(_run_batcher(records, args.batch, Path(folder) / "s")))]
    print(f"\n| {'metadata batcher':<26} | {'add() µs/batch':>15} | {'write µs/batch':>15} |")
    print(f"| {'-' * 26} | {'-' * 15}:| {'-' * 15}:|")
    for name, add_us, write_us in rows:
        print(f"| {name:<26} | {add_us:>15.1f} | {write_us:>15.1f} |")


if __name__ == "__main__":
    main()
