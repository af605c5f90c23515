"""Memory and CPU of a system's whole process tree (Ray's raylet, GCS, workers, HAProxy and
Redis for NeuroAPI; every worker for LiteLLM), sampled in the background."""

from __future__ import annotations

import threading
import time

import psutil


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def measure(pid: int) -> tuple[int, int, float]:
    """(RSS bytes, USS bytes, CPU seconds) summed over the tree. RSS counts shared pages once
    per process; USS counts only what each process alone holds."""
    rss = uss = 0
    cpu = 0.0
    for process in tree(pid):
        try:
            with process.oneshot():
                memory = process.memory_full_info()
                times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += memory.rss
        uss += memory.uss
        cpu += times.user + times.system + times.children_user + times.children_system
    return rss, uss, cpu


class TreeMonitor:
    """Samples ``measure(pid)`` every ``interval_s`` until stopped; keeps the peaks."""

    def __init__(self, pid: int, interval_s: float = 1.0):
        self.pid = pid
        self.interval_s = interval_s
        self.peak_rss = self.peak_uss = 0
        self.samples: list[tuple[float, int, int]] = []  # (monotonic time, rss, uss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, uss, _ = measure(self.pid)
            self.samples.append((time.monotonic(), rss, uss))
            self.peak_rss, self.peak_uss = max(self.peak_rss, rss), max(self.peak_uss, uss)
            self._stop.wait(self.interval_s)

    def rss_between(self, start: float, end: float) -> list[int]:
        return [rss for at, rss, _ in self.samples if start <= at <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
