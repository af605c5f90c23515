"""The audit stream: who changed what and when (scopes, fine-tunes). Never customer content."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

AUDIT_STREAM = "neuroapi:audit"
AUDIT_MAX_ENTRIES = 1_000_000


def audit_fields(actor: str, action: str, **details: str) -> dict[str, str]:
    return {"at": str(int(time.time())), "actor": actor, "action": action, **details}


async def audit(redis: aioredis.Redis, actor: str, action: str, **details: str) -> None:
    await redis.xadd(AUDIT_STREAM, audit_fields(actor, action, **details), maxlen=AUDIT_MAX_ENTRIES, approximate=True)
