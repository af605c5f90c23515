"""Ray Serve metrics for the plain deployments that report counts (made inside the replica)."""

from __future__ import annotations

from collections.abc import Callable

from ray.serve.metrics import Counter, Histogram

BATCH_SIZE_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


def metering_events() -> Callable[[str, int], None]:
    """``Batcher``'s ``on_event`` hook: records written, spilled, dropped; batch sizes."""
    counters = {
        "written": Counter("neuroapi_metering_written_total", "Call records written to Redis"),
        "spilled": Counter("neuroapi_metering_spilled_total", "Call records spilled to disk"),
        "dropped": Counter("neuroapi_metering_dropped_total", "Call records lost"),
    }
    batch_size = Histogram("neuroapi_metering_batch_size", "Call records per Redis write",
                           boundaries=BATCH_SIZE_BOUNDARIES)

    def export(kind: str, count: int) -> None:
        counters[kind].inc(count)
        if kind == "written":
            batch_size.observe(count)

    return export
