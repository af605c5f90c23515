"""A sliding-window limit kept in one replica's memory: the failed-authentication count while
Redis (where the cluster-wide count lives, ``actors.accounts.sliding_window``) is unreachable.

Same rule as the Redis script: at most ``limit`` events per subject in any ``window_s``; once
reached, the subject is blocked until the oldest event leaves the window, and events while
blocked are not counted. Per replica, so during an outage a source gets ``limit`` attempts per
window on each ingress replica instead of in all: a bound still, and the request is answered
(401 or 429) rather than failed. At most ``max_subjects`` are tracked (the oldest dropped)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from actors.accounts.sliding_window import Verdict


class LocalSlidingWindow:
    def __init__(self, limit: int, window_s: float, max_subjects: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self._limit = limit
        self._window_s = window_s
        self._max_subjects = max_subjects
        self._clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def record(self, subject: str) -> Verdict:
        now = self._clock()
        events = self._events.pop(subject, None) or deque()
        while events and events[0] <= now - self._window_s:
            events.popleft()
        counted = len(events) < self._limit
        if counted:
            events.append(now)
        self._events[subject] = events  # most recently used last
        while len(self._events) > self._max_subjects:
            self._events.popitem(last=False)
        if len(events) < self._limit:
            return Verdict(len(events), 0.0, counted)
        return Verdict(len(events), max(events[0] + self._window_s - now, 0.001), counted)
