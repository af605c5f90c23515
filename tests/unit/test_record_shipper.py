"""The ingress side of metering: batches in order, nothing lost while the batcher is away."""

import asyncio

from serve_app.record_shipper import RecordShipper
from tests.unit.test_metering import record


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


async def test_with_metering_off_nothing_is_kept():
    shipper = RecordShipper(None)
    shipper.start()
    shipper.add(record())
    await shipper.aclose()
    assert shipper.dropped == 0
