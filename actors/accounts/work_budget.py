"""A budget for CPU-heavy work (bcrypt) in one process: its own threads, and a bounded queue.

Each kind of work gets its own budget, so a flood of one kind (sign-ups) never queues in front
of another (log-ins) the way it would in the event loop's shared default executor; and beyond
``running + waiting`` calls in flight, a call is refused at once (``Busy``) rather than
queued without limit. A budget's threads may run at a lower CPU priority (``nice``, Linux): a
sign-up then hashes on CPU that log-ins, key checks and chat calls leave idle."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value (Linux schedules threads one by one); elsewhere a no-op."""
    if nice > 0 and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass


class Busy(RuntimeError):
    """The budget is spent: ``running`` calls run and ``waiting`` wait already."""


class WorkBudget:
    def __init__(self, name: str, running: int, waiting: int, nice: int = 0):
        if running < 1 or waiting < 0:
            raise ValueError("a work budget needs running >= 1 and waiting >= 0")
        self.capacity = running + waiting
        self._pool = ThreadPoolExecutor(max_workers=running, thread_name_prefix=f"budget-{name}",
                                        initializer=_lower_priority, initargs=(nice,))
        self._in_flight = 0  # touched on the event loop's thread only

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def run(self, work: Callable[..., T], *args) -> T:
        """``work(*args)`` in this budget's threads; raises ``Busy`` when it is full."""
        if self._in_flight >= self.capacity:
            raise Busy()
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        # Counted until the thread is done with it, even if the caller stops waiting: the
        # threads are what the budget bounds.
        future = self._pool.submit(work, *args)
        future.add_done_callback(lambda _: self._call_soon(loop))
        return await asyncio.wrap_future(future)

    def _call_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.call_soon_threadsafe(self._done)
        except RuntimeError:  # the loop is closed: nobody counts any more
            pass

    def _done(self) -> None:
        self._in_flight -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
