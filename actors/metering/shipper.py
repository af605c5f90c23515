"""Metering records from one ingress replica to the metadata batcher, in batches.

``add`` is a list append on the request's path; a background task ships what accumulated
every ``every_s`` in one handle call. While the batcher is unreachable (restarting) records
are kept in order for the next try, up to ``max_unshipped``.

With a write-ahead log (``wal``: ``actors.metering.spill.SpillFiles`` in the batcher's spill
folder) no record is lost when the replica's process dies (``kill -9``): ``add`` also appends
the record's line to the log (one ``os.write``, into the page cache: it survives the process,
not the machine), and a batch's segments are deleted once the batcher has it. The log is
owned through an flock, so when the process dies its segments become orphans that the
batcher adopts and replays; a record shipped and replayed counts once (``UsageStore`` is
idempotent per request id). Past ``max_unshipped`` the whole log is handed to the batcher the
same way (released while alive) and memory starts afresh: nothing is dropped unless the log
itself could not be written."""

from __future__ import annotations

import asyncio
import logging

from actors.metering.record import CallRecord
from actors.metering.spill import SpillFiles

logger = logging.getLogger("neuroapi.ingress")


class RecordShipper:
    def __init__(self, batcher, every_s: float = 0.2, max_unshipped: int = 100_000,
                 wal: SpillFiles | None = None):
        self._batcher = batcher  # anything with ``record.remote(list[CallRecord])``; None = metering off
        self._every_s = every_s
        self._max_unshipped = max_unshipped
        self._wal = wal if batcher is not None else None
        self._records: list[CallRecord] = []
        self._unlogged = 0  # records in memory that the log failed to take (not safe to hand off)
        self._handoffs = 0  # bumped when the log is handed off: an in-flight batch's segments went with it
        self.dropped = 0
        self.handed_off = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._batcher is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._ship_forever())

    def add(self, record: CallRecord) -> None:
        if self._batcher is None:
            return
        self._records.append(record)
        if self._wal is not None:
            try:
                self._wal.append([record])
            except OSError as error:
                self._unlogged += 1
                if self._unlogged % 1000 == 1:
                    logger.error("metering write-ahead log failed (%s): %d records only in memory",
                                 type(error).__name__, self._unlogged)
        if len(self._records) > self._max_unshipped:
            self._overflow()

    def _overflow(self) -> None:
        if self._wal is not None and self._unlogged == 0:
            try:  # every record in memory is in the log: hand the log to the batcher's replay
                self._wal.close()
            except OSError as error:
                logger.error("metering write-ahead log could not be handed off (%s)", type(error).__name__)
            else:
                self._handoffs += 1
                self.handed_off += len(self._records)
                logger.warning("metadata batcher unreachable: %d metering records handed to its spill "
                               "folder (%d so far)", len(self._records), self.handed_off)
                self._records = []
                return
        del self._records[0]
        self.dropped += 1
        if self.dropped % 1000 == 1:
            logger.error("metering records dropped in the ingress: %d so far", self.dropped)

    async def ship(self) -> None:
        if not self._records:
            return
        batch, self._records = self._records, []
        handoffs = self._handoffs
        sealed = self._seal()
        try:
            await self._batcher.record.remote(batch)
        except asyncio.CancelledError:  # stopping: ``aclose`` ships them
            self._records[:0] = batch
            raise
        except Exception as error:  # the batcher is restarting: keep them, in order, for the next try
            logger.warning("metadata batcher unreachable (%s); %d records kept", type(error).__name__, len(batch))
            self._records[:0] = batch
            return
        if self._wal is not None and handoffs == self._handoffs:
            self._wal.discard(sealed)
        if not self._records:
            self._unlogged = 0  # what the log missed has been shipped

    def _seal(self) -> int:
        if self._wal is None:
            return 0
        try:
            return self._wal.seal()
        except OSError:
            return 0  # nothing deleted on success: at worst replayed (and counted once)

    async def aclose(self) -> None:
        """Stop, and ship what is left (a graceful stop loses no record; what the batcher did
        not take stays in the log for it to replay)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.ship()
        if self._wal is not None:
            self._wal.close()

    async def _ship_forever(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            await self.ship()
