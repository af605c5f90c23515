"""The benchmark's own honesty: open-loop latency counts queueing, and the table's verdicts."""

import asyncio
import json
import time

import pytest
from aiohttp import web

from benchmarks.load import Phase
from benchmarks.report import highest_held, rows, summarise, top_frames


@pytest.fixture
async def one_at_a_time_server():
    """Answers one request at a time, each taking 50 ms: at 40 requests/s it falls behind."""
    lock = asyncio.Lock()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        async with lock:
            await asyncio.sleep(0.05)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1/chat/completions"
    await runner.cleanup()


async def test_open_loop_latency_includes_the_time_spent_queued(one_at_a_time_server):
    started = time.perf_counter()
    result = await Phase({"url": one_at_a_time_server, "rate": 40, "duration_s": 1.0, "warmup": 0}).run()
    elapsed = time.perf_counter() - started
    assert result["requests"] == result["ok"] == 40
    latencies = sorted(result["latency_ms"])
    # Served back to back: the last of 40 finishes about 2 s after the first was due, and its
    # latency, measured from when it was scheduled (~1 s), shows about 1 s of queueing. A
    # closed-loop client would have reported 50 ms for every request.
    assert elapsed >= 1.9
    assert latencies[-1] > 800
    assert latencies[0] < 200


async def test_sequential_phase_counts_failures_by_kind(one_at_a_time_server):
    result = await Phase({"url": one_at_a_time_server + "/missing", "rate": 0, "count": 3, "warmup": 0}).run()
    assert result["ok"] == 0 and result["errors"] == {"http 404": 3}


def phase(p50: float, p99: float, failed: int = 0, **extra) -> dict:
    return {"p50": p50, "p99": p99, "failed": failed, "requests": 100, "gap_p50": 20.0, "gap_p99": 21.0, **extra}


def test_a_rate_is_held_only_without_failures_and_with_p99_added_under_50_ms():
    direct = {"rate 50": phase(1, 2), "rate 100": phase(1, 2), "rate 200": phase(1, 2)}
    gateway = {"rate 50": phase(3, 40), "rate 100": phase(3, 60), "rate 200": phase(3, 10, failed=1)}
    assert highest_held(gateway, direct, [50, 100, 200]) == "50/s"
    assert highest_held({k: phase(3, 60) for k in gateway}, direct, [50, 100, 200]) == "under 50/s"


def test_the_table_reports_gateway_minus_direct():
    phases = ["sequential", "rate 50", "stream sequential", "stream 20 concurrent"]
    direct = {"version": "", "phases": {name: phase(1.0, 2.0) for name in phases}}
    gateway = {"version": "x", "phases": {**{name: phase(4.0, 9.0) for name in phases},
                                          "soak": phase(4.0, 9.0, cpu_s_per_1000=3.5)},
               "memory": {"peak_rss": 300 * 2**20, "peak_uss": 200 * 2**20, "soak_growth_rss": 2**20,
                          "soak_s": 120, "soak_rate": 100}}
    header, table = rows({"systems": {"direct": direct, "neuroapi": gateway}})
    assert header[2] == "NeuroAPI added p50 / p99 ms"
    cells = {line[0]: line[1:] for line in table}
    assert cells["non-stream, concurrency 1"] == ["1.00 / 2.00", "3.00 / 7.00"]
    assert cells["64-chunk stream, concurrency 1: gap between chunks"] == ["20.00 / 21.00", "0.00 / 0.00"]
    assert cells["peak RSS of all the gateway's processes, MB (USS)"] == ["", "300 (200)"]
    assert cells["CPU seconds per 1,000 requests (same run)"] == ["", "3.50"]


def test_summary_percentiles_and_failures():
    summary = summarise({"requests": 4, "ok": 3, "errors": {"timeout": 1}, "wall_s": 1.5,
                         "latency_ms": [3.0, 1.0, 2.0], "gap_ms": []})
    assert (summary["p50"], summary["p99"], summary["failed"], summary["per_s"]) == (2.0, 3.0, 1, 2.0)
    assert json.dumps(summary)  # goes into results.json


def test_profile_shares_count_each_function_once_per_stack():
    collapsed = "main (a.py:1);work (a.py:5);work (a.py:5) 3\nmain (a.py:1);idle (a.py:9) 1\n"
    shares = top_frames(collapsed)
    assert shares["samples"] == 4
    assert dict(shares["inclusive"])["work (a.py:5)"] == 75.0
    assert dict(shares["self"]) == {"work (a.py:5)": 75.0, "idle (a.py:9)": 25.0}
