"""``MetadataBatcher``: the thin Serve deployment the ingress sends call records to, around the
plain-Python ``Batcher`` (``actors.metering.batcher``), which holds the batching, retry and
spill policy. A plain class: ``serve_app.app`` wraps it with ``serve.deployment``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.metering.batcher import Batcher
from actors.metering.record import CallRecord
from actors.metering.retention import dedupe_ttl_s
from actors.metering.usage_store import UsageStore
from config.settings import Settings
from core.redis_conn import connect

# Bounds each Redis reply: a slow Redis becomes a failed attempt (retried), not a stuck loop.
REDIS_TIMEOUT_S = 5.0


class MetadataBatcher:
    """Receives call records from the ingress replicas; writes them with a ``Batcher``.

    ``metrics``: makes, inside the replica, the hook that exports the batcher's counts
    (``serve_app.ray_metrics.metering_events``); none in tests."""

    def __init__(self, settings: Settings, redis_url: str,
                 metrics: Callable[[], Callable[[str, int], None]] | None = None):
        self._redis = connect(redis_url, socket_timeout=REDIS_TIMEOUT_S, retries=0)
        store = UsageStore(self._redis, stream_max_entries=settings.calls_stream_max_entries,
                           dedupe_ttl_s=dedupe_ttl_s(settings.calls_retention_days))  # marks go with their entries
        self._batcher = Batcher(
            store, max_batch=settings.metering_max_batch, max_age_s=settings.metering_max_age_s,
            buffer_records=settings.metering_buffer_records, spill_dir=settings.metering_spill_dir,
            on_event=metrics() if metrics else None)
        self._batcher.start()

    async def record(self, records: list[CallRecord]) -> None:
        self._batcher.add(records)  # in its write-ahead log before we answer (and the ingress drops its own)

    async def stats(self) -> dict[str, Any]:
        return self._batcher.stats()

    async def flush(self) -> int:
        return await self._batcher.flush(timeout_s=30.0)

    async def close(self) -> None:  # Serve calls it at shutdown (serve_app.app.as_replica)
        await self._batcher.aclose(timeout_s=10.0)
        await self._redis.aclose()
