"""The periodic housekeeping pass: deleted accounts purged (``actors.accounts.deletion``) and
the retention windows applied (``actors.metering.retention``), every ``housekeeping_every_s``;
``neuroapi purge`` runs one pass now. Any number may run: a pass holds a Redis lock."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import redis.asyncio as aioredis

from actors.accounts.deletion import purge_due
from actors.metering.retention import apply_retention
from config.settings import Settings
from core.redis_conn import connect

logger = logging.getLogger("neuroapi.housekeeping")
LEADER_KEY = "neuroapi:housekeeping-leader"
LEADER_MS = 10 * 60 * 1000  # longer than any pass; released at its end
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


async def housekeeping_pass(redis: aioredis.Redis, settings: Settings, now: float | None = None) -> dict | None:
    """One pass: {"purged": [account ids], "trimmed": {...}}; None while another runs one."""
    token = secrets.token_hex(8)
    if not await redis.set(LEADER_KEY, token, nx=True, px=LEADER_MS):
        return None
    try:
        now = time.time() if now is None else now
        purged = await purge_due(redis, now)
        trimmed = await apply_retention(redis, int(now * 1000), settings.calls_retention_days,
                                        settings.usage_retention_months, settings.audit_retention_days)
        return {"purged": purged, "trimmed": trimmed}
    finally:
        await redis.eval(_RELEASE, 1, LEADER_KEY, token)


class Housekeeping:
    """The pass as a deployment (``serve_app.app``)."""

    def __init__(self, settings: Settings, redis_url: str):
        self._settings = settings
        self._redis = connect(redis_url)
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.housekeeping_every_s)
            try:
                await housekeeping_pass(self._redis, self._settings)
            except Exception as error:  # the next pass does what this one could not
                logger.warning("housekeeping pass failed: %s", type(error).__name__)

    async def close(self) -> None:  # Serve calls it at shutdown (serve_app.app.as_replica)
        self._task.cancel()
        await self._redis.aclose()
