"""Metering records from one ingress replica to the metadata batcher, in batches.

``add`` is a list append on the request's path; a background task ships what accumulated
every ``every_s`` in one handle call. While the batcher is unreachable (restarting) records
are kept in order for the next try, up to ``max_unshipped``; past that the oldest go, loudly."""

from __future__ import annotations

import asyncio
import logging

from actors.metering import CallRecord

logger = logging.getLogger("neuroapi.ingress")


class RecordShipper:
    def __init__(self, batcher, every_s: float = 0.2, max_unshipped: int = 100_000):
        self._batcher = batcher  # anything with ``record.remote(list[CallRecord])``; None = metering off
        self._every_s = every_s
        self._max_unshipped = max_unshipped
        self._records: list[CallRecord] = []
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._batcher is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._ship_forever())

    def add(self, record: CallRecord) -> None:
        if self._batcher is None:
            return
        self._records.append(record)
        if len(self._records) > self._max_unshipped:
            del self._records[0]
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.error("metering records dropped in the ingress: %d so far", self.dropped)

    async def ship(self) -> None:
        if not self._records:
            return
        batch, self._records = self._records, []
        try:
            await self._batcher.record.remote(batch)
        except Exception as error:  # the batcher is restarting: keep them, in order, for the next try
            logger.warning("metadata batcher unreachable (%s); %d records kept", type(error).__name__, len(batch))
            self._records[:0] = batch

    async def aclose(self) -> None:
        """Stop, and ship what is left (a graceful stop loses no record)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.ship()

    async def _ship_forever(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            await self.ship()
