"""The ingress side of metering: batches in order, nothing lost while the batcher is away."""

import asyncio
import logging

from actors.metering.shipper import RecordShipper
from actors.metering.spill import SpillFiles
from tests.support.call_records import record


class Batcher:
    """Stands in for the deployment handle: ``record.remote`` fails while ``down``."""

    def __init__(self):
        self.batches: list[list] = []
        self.down = False
        self.record = self

    async def remote(self, batch):
        if self.down:
            raise ConnectionError("batcher restarting")
        self.batches.append(batch)


async def test_records_go_in_batches_in_order_and_wait_while_the_batcher_is_away():
    batcher = Batcher()
    shipper = RecordShipper(batcher, every_s=0.05)
    shipper.start()
    for n in range(3):
        shipper.add(record(request_id=f"r{n}"))
    await asyncio.sleep(0.15)
    batcher.down = True
    for n in range(3, 6):
        shipper.add(record(request_id=f"r{n}"))
    await asyncio.sleep(0.15)
    batcher.down = False
    shipper.add(record(request_id="r6"))
    await shipper.aclose()
    shipped = [r.request_id for batch in batcher.batches for r in batch]
    assert shipped == [f"r{n}" for n in range(7)]
    assert batcher.batches[0] == [record(request_id=f"r{n}") for n in range(3)]


async def test_past_its_limit_the_oldest_record_goes_and_is_counted():
    batcher = Batcher()
    batcher.down = True
    shipper = RecordShipper(batcher, max_unshipped=3)
    for n in range(5):
        shipper.add(record(request_id=f"r{n}"))
    batcher.down = False
    await shipper.aclose()
    assert [r.request_id for r in batcher.batches[0]] == ["r2", "r3", "r4"] and shipper.dropped == 2


async def test_with_metering_off_nothing_is_kept(tmp_path, caplog):
    """Metering off (no batcher), built as the gateway builds it, write-ahead log included: no call
    record reaches the disk, and however many calls come, none is held to be shipped or dropped."""
    spill = tmp_path / "metering-spill"
    shipper = RecordShipper(None, max_unshipped=2, wal=SpillFiles(spill))
    shipper.start()
    with caplog.at_level(logging.WARNING, logger="neuroapi.ingress"):
        for n in range(5):
            shipper.add(record(request_id=f"r{n}"))
        await shipper.aclose()
    assert list(spill.rglob("*.jsonl")) == []  # no record on disk
    assert (shipper.dropped, shipper.handed_off) == (0, 0)  # past max_unshipped, had it kept any
    assert caplog.records == []  # no "records dropped" alarm for the operator
