"""Cache holders for tests: real ``InvalidationListener``s, as the ingress replicas run them,
subscribed before the test goes on (a broadcast waits only for holders that subscribed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from core.invalidation import InvalidationListener


@asynccontextmanager
async def listening(redis_url: str, *handlers: Callable[[str, str], None],
                    timeout_s: float = 10.0) -> AsyncIterator[None]:
    """One subscribed listener per ``handler(topic, subject)``; stopped on the way out."""
    listeners = [InvalidationListener(redis_url, handler, lambda: None) for handler in handlers]
    for listener in listeners:
        listener.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not all(listener.healthy for listener in listeners):
            assert time.monotonic() < deadline, "a listener did not subscribe"
            await asyncio.sleep(0.02)
        yield
    finally:
        for listener in listeners:
            await listener.stop()
