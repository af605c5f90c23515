"""Call records to Redis in batches, with nothing lost while Redis is down or slow.

``Batcher`` is the plain-Python core; ``MetadataBatcher``
(``actors.metering.batcher_deployment``) is the thin Serve deployment the ingress sends records to.

Policy: records are written in arrival order, in batches of ``max_batch`` or once the oldest
has waited ``max_age_s``. A failed write (Redis down, a reply slower than the socket timeout)
keeps the batch at the head of the queue and retries it with backoff (0.1 s doubling to 2 s);
retrying is safe because ``UsageStore`` counts each request id once. Up to ``buffer_records``
records wait in memory. Beyond that, records are appended to JSONL files under the spill
directory (records hold no text, so they may touch disk); while anything is spilled, newer
records go to the spill too, so order holds. Once Redis accepts writes, the memory buffer is
written, then the spill files oldest first, each deleted once written. On shutdown whatever
could not be written in time is spilled; a later batcher on the same directory adopts and
replays the files of one that is gone (``actors.metering.spill``). Only
if the spill write itself fails are records dropped.

With a spill directory, what waits in memory is also in a write-ahead log there (``MemoryLog``):
``add`` appends the received records (one ``os.write``) before it returns, so before the ingress
is told they are taken (and deletes its own log of them); a log segment is deleted once all its
records have left memory (written, or spilled at shutdown). A batcher killed (``kill -9``) leaves
the log as an orphan, which the next batcher (or another live one, every ``adopt_every_s``)
adopts and replays; a record already written counts once. Spilling and dropping are logged
(rate-limited, counts only) and counted: ``spilled_total``, ``dropped_total``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from actors.metering.record import CallRecord
from actors.metering.spill import MemoryLog, SpillFiles

logger = logging.getLogger("neuroapi.metering")

LOG_EVERY_S = 10.0
RECENT_BATCHES = 1000


class Store(Protocol):
    async def write(self, records: list[CallRecord]) -> int: ...


class _RateLimitedLog:
    """At most one line per kind every ``every_s``; the next says how many were held back."""

    def __init__(self, every_s: float = LOG_EVERY_S):
        self._every_s = every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, level: int, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self._every_s) < self._every_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            message += " (%d similar messages held back)"
            args = (*args, held)
        logger.log(level, message, *args)


class Batcher:
    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 200,
        max_age_s: float = 0.2,
        buffer_records: int = 100_000,
        spill_dir: Path | None = None,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 2.0,
        adopt_every_s: float = 5.0,
        memory_log: bool = True,
        on_event: Callable[[str, int], None] | None = None,
    ):
        """``on_event(kind, count)`` is told of each ``written`` batch and of ``spilled`` and
        ``dropped`` records (for metrics)."""
        if max_batch < 1 or buffer_records < 1 or max_age_s < 0:
            raise ValueError("max_batch and buffer_records must be positive, max_age_s not negative")
        self._store = store
        self._max_batch = max_batch
        self._max_age_s = max_age_s
        self._capacity = buffer_records
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._on_event = on_event
        self._spill = SpillFiles(spill_dir) if spill_dir is not None else None
        self._memory_log = MemoryLog(spill_dir) if spill_dir is not None and memory_log else None
        # Orphans appear while we run too: an ingress replica that died (its write-ahead log),
        # or that handed its log over while we were unreachable.
        self._adopt_every_s = adopt_every_s
        self._next_adopt = 0.0
        self._buffer: deque[tuple[float, CallRecord]] = deque()  # (monotonic time added, record)
        self._replay: list[CallRecord] | None = None  # a chunk read from the spill, being written
        self._log = _RateLimitedLog()
        # Progress in records, for flush(): accepted (to memory or spill) and settled (written,
        # or found unreadable in the spill).
        self._accepted = 0
        self._settled = 0
        self._flush_target = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written_total = 0  # records Redis accepted (a re-sent, already counted one included)
        self.counted_total = 0  # of those, newly counted
        self.spilled_total = 0
        self.dropped_total = 0
        self.batches_total = 0
        self.failures_total = 0  # failed write attempts
        self.recent_batch_sizes: deque[int] = deque(maxlen=RECENT_BATCHES)

    # ---- the producer side ------------------------------------------------------------------

    def add(self, records: Iterable[CallRecord]) -> None:
        """Queue ``records``; never blocks on Redis and never raises."""
        try:
            self._add(list(records))
        except Exception as error:  # a bug here must not fail the caller's request
            self._log(logging.ERROR, "add", "metering: could not queue call records (%s)", type(error).__name__)

    def _add(self, records: list[CallRecord]) -> None:
        valid = [r for r in records if isinstance(r, CallRecord) and r.request_id]
        if len(valid) < len(records):
            self._drop(len(records) - len(valid), "not a call record with a request id")
        if not valid:
            return
        if self._closed:
            self._drop(len(valid), "the batcher is closed")
            return
        try:
            self.start()
        except RuntimeError:
            pass  # no event loop yet: the records wait in the buffer until one starts the loop
        was_empty = not self._buffer
        overflow = valid
        if not (self._spill is not None and self._spill.has_data):  # else spill, to keep order
            room = max(self._capacity - len(self._buffer), 0)
            now = time.monotonic()
            self._log_memory(valid[:room])
            self._buffer.extend((now, r) for r in valid[:room])
            self._accepted += min(room, len(valid))
            overflow = valid[room:]
        if overflow:
            self._spill_or_drop(overflow)
        if was_empty or len(self._buffer) >= self._max_batch or overflow:
            self._wake.set()

    def _log_memory(self, records: list[CallRecord]) -> None:
        if self._memory_log is None or not records:
            return
        try:
            self._memory_log.append(records)
        except OSError as error:  # kept in memory all the same: lost only if the process dies
            self._log(logging.ERROR, "memory-log", "metering: the write-ahead log failed (%s); %d call "
                      "records in memory only", type(error).__name__, len(records))

    def _spill_or_drop(self, records: list[CallRecord]) -> None:
        if self._spill is None:
            self._drop(len(records), "the buffer is full and no spill directory is set")
            return
        try:
            self._spill.append(records)
        except OSError as error:
            self._drop(len(records), f"the buffer is full and the spill write failed ({type(error).__name__})")
            return
        self._accepted += len(records)
        self.spilled_total += len(records)
        self._event("spilled", len(records))
        self._log(logging.WARNING, "spill", "metering: Redis is behind; %d call records spilled to disk "
                  "(%d in all)", len(records), self.spilled_total)

    def _drop(self, count: int, why: str) -> None:
        self.dropped_total += count
        self._event("dropped", count)
        self._log(logging.ERROR, "drop:" + why, "metering: %d call records DROPPED: %s (%d in all)",
                  count, why, self.dropped_total)

    def _event(self, kind: str, count: int) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, count)
            except Exception as error:
                self._log(logging.ERROR, "event", "metering: metrics hook failed (%s)", type(error).__name__)

    # ---- the writer side --------------------------------------------------------------------

    def start(self) -> None:
        """Start the flush loop (and adopt spill files a stopped batcher left); needs a running
        event loop. Called by ``add`` and ``flush`` if not before."""
        if self._task is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._adopt()
        self._task = loop.create_task(self._run())

    def _adopt(self) -> None:
        if self._spill is None:
            return
        self._next_adopt = time.monotonic() + self._adopt_every_s
        try:
            adopted = self._spill.adopt_orphans()
        except OSError as error:
            adopted = 0
            logger.error("metering: could not read the spill directory (%s)", type(error).__name__)
        if adopted:
            self._accepted += adopted
            self._wake.set()
            logger.warning("metering: replaying %d call records spilled or logged by a process that is "
                           "gone (those already written count once)", adopted)

    def _urgent(self) -> bool:
        return self._closed or self._settled < self._flush_target

    def _next_batch(self) -> tuple[list[CallRecord] | None, float | None]:
        """The batch to write now, or None and how long until one is due (None: when woken)."""
        if self._buffer:
            wait = self._buffer[0][0] + self._max_age_s - time.monotonic()
            spilling = self._spill is not None and self._spill.has_data
            if len(self._buffer) >= self._max_batch or wait <= 0 or spilling or self._urgent():
                if self._memory_log is not None:
                    self._memory_log.cut()  # records added from now on go to a new segment
                return [r for _, r in islice(self._buffer, self._max_batch)], None
            return None, wait
        while self._replay is None and self._spill is not None and self._spill.has_data:
            records, bad = self._spill.read(self._max_batch)
            if bad:
                self._settled += bad
                self._progress.set()
                self._drop(bad, "unreadable lines in a spill file")
            if records:
                self._replay = records
            else:
                self._spill.consumed()
        return self._replay, None

    async def _run(self) -> None:
        backoff = self._retry_initial_s
        # Not ``while True``: on Python 3.11 ``wait_for`` swallows a cancel that lands as its
        # event fires, so ``aclose`` (which sets ``_stop``, then cancels) ends the loop here too.
        while not self._stop.is_set():
            try:
                if self._spill is not None and time.monotonic() >= self._next_adopt:
                    self._adopt()
                batch, wait = self._next_batch()
                if batch is None:
                    self._wake.clear()
                    if self._spill is not None:  # wake for the next adoption round too
                        until_adopt = max(self._next_adopt - time.monotonic(), 0.0)
                        wait = until_adopt if wait is None else min(wait, until_adopt)
                    await self._sleep(self._wake, wait)
                    continue
                try:
                    counted = await self._store.write(batch)
                except Exception as error:  # Redis down, slow, restarting: keep and retry
                    self.failures_total += 1
                    self._log(logging.WARNING, "write", "metering: writing %d call records failed (%s); "
                              "%d buffered in memory, retrying", len(batch), type(error).__name__,
                              len(self._buffer))
                    await self._sleep(self._stop, backoff)
                    backoff = min(backoff * 2, self._retry_max_s)
                    continue
                backoff = self._retry_initial_s
                self._written(batch, counted)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a bug or the disk: never let the loop die
                self._log(logging.ERROR, "loop", "metering: flush loop error (%s)", type(error).__name__)
                await self._sleep(self._stop, self._retry_max_s)

    @staticmethod
    async def _sleep(event: asyncio.Event, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    def _written(self, batch: list[CallRecord], counted: int) -> None:
        if self._replay is batch:
            self._replay = None
            assert self._spill is not None
            self._spill.consumed()
        else:
            for _ in batch:
                self._buffer.popleft()
            if self._memory_log is not None:
                self._memory_log.left_memory(len(batch))
        self.written_total += len(batch)
        self.counted_total += counted
        self.batches_total += 1
        self.recent_batch_sizes.append(len(batch))
        self._settled += len(batch)
        self._progress.set()
        self._event("written", len(batch))

    async def flush(self, timeout_s: float | None = None) -> int:
        """Write everything queued before this call (memory and spill); returns how many records
        were written meanwhile. Raises ``TimeoutError`` if Redis did not take them in time."""
        if self._closed:
            return 0
        self.start()
        target = self._accepted
        self._flush_target = max(self._flush_target, target)
        before = self.written_total
        self._wake.set()

        async def settled() -> None:
            while self._settled < target:
                self._progress.clear()
                await self._progress.wait()

        await asyncio.wait_for(settled(), timeout_s)
        return self.written_total - before

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (for up to ``timeout_s``), spill what is left, stop."""
        if self._closed:
            return
        try:
            await self.flush(timeout_s)
        except TimeoutError:
            pass
        self._closed = True
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        left = [r for _, r in self._buffer]
        self._buffer.clear()
        keep_log = False
        if left:
            try:
                if self._spill is None:
                    raise OSError("no spill directory")
                self._spill.put_first(left)
            except OSError as error:
                keep_log = self._memory_log is not None and self._memory_log.gap == 0
                if keep_log:  # they are all in the write-ahead log: the next batcher replays it
                    logger.warning("metering: %d call records left for the next start (write-ahead log)", len(left))
                else:
                    self._drop(len(left), f"shutdown with Redis unavailable and no spill ({type(error).__name__})")
            else:
                self.spilled_total += len(left)
                self._event("spilled", len(left))
                logger.warning("metering: %d call records left for the next start (spilled)", len(left))
        if self._memory_log is not None:
            try:
                self._memory_log.close(keep=keep_log)
            except OSError as error:  # at worst replayed later, and counted once
                logger.error("metering: could not clear the write-ahead log (%s)", type(error).__name__)
        if self._spill is not None:
            self._spill.close()

    def stats(self) -> dict[str, Any]:
        return {
            "buffered": len(self._buffer),
            "pending": self._accepted - self._settled,  # buffered plus spilled, not yet written
            "written_total": self.written_total,
            "counted_total": self.counted_total,
            "spilled_total": self.spilled_total,
            "dropped_total": self.dropped_total,
            "batches_total": self.batches_total,
            "failures_total": self.failures_total,
            "recent_batch_sizes": list(self.recent_batch_sizes),
        }
