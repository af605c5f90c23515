"""The fault and soak harness's own arithmetic (benchmarks.faults, traffic, soak,
fault_upstream): what it calls a cut stream, a recovery, a metering gap, a growth."""

from __future__ import annotations

import httpx
import pytest

from benchmarks import fault_upstream
from benchmarks.faults import metering, recovery_s, summarise
from benchmarks.soak import growth, table
from benchmarks.traffic import Outcome, classify_stream, completion_in_shape, error_in_shape


def test_a_stream_is_done_only_with_done_and_no_error_event():
    chunk = b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n'
    assert classify_stream(chunk * 3 + b"data: [DONE]\n\n") == Outcome.OK
    assert classify_stream(chunk + b'data: {"error": {"message": "cut"}}\n\n') == Outcome.STREAM_ERROR_EVENT
    assert classify_stream(chunk + b'data: {"error": {"message": "cut"}}\n\ndata: [DONE]\n\n') == \
        Outcome.STREAM_ERROR_EVENT  # an error event followed by [DONE] is still a cut stream
    assert classify_stream(chunk * 2) == Outcome.STREAM_TRUNCATED
    assert classify_stream(b"") == Outcome.STREAM_TRUNCATED


def test_shapes():
    assert completion_in_shape(b'{"choices": [{"message": {"content": "ok"}}]}')
    assert not completion_in_shape(b"{}") and not completion_in_shape(b"[1]") and not completion_in_shape(b"x")
    assert error_in_shape(b'{"error": {"message": "m", "type": "t"}}')
    assert not error_in_shape(b"<html>Internal Server Error</html>") and not error_in_shape(b'{"detail": "x"}')


def trace(kind="chat", sent=0.0, done=None, status=200, outcome=Outcome.OK, request_id="", retry_after=False):
    return {"kind": kind, "sent": sent, "done": sent + 0.01 if done is None else done, "status": status,
            "outcome": outcome, "request_id": request_id, "retry_after": retry_after}


def test_recovery_is_the_first_of_ten_successes_after_the_fault():
    failing = [trace(sent=10 + i * 0.1, status=500, outcome=Outcome.ERROR) for i in range(5)]
    ok = [trace(sent=10.5 + i * 0.1) for i in range(10)]
    assert recovery_s(failing + ok, fault_end=10.0) == pytest.approx(0.51)
    broken = ok[:9] + [trace(sent=11.45, status=500, outcome=Outcome.ERROR)]
    assert recovery_s(failing + broken, fault_end=10.0) is None  # never ten in a row
    assert recovery_s(ok, fault_end=20.0) is None  # nothing sent after the fault


def test_summary_counts_what_clients_saw():
    traces = [trace(), trace(status=503, outcome=Outcome.ERROR, retry_after=True, sent=5),
              trace(status=500, outcome=Outcome.BAD_ERROR, sent=5), trace(status=0, outcome=Outcome.HUNG, sent=5),
              trace(kind="stream", outcome=Outcome.STREAM_TRUNCATED), trace(outcome=Outcome.INVALID_200)]
    summary = summarise(traces, fault_start=4, fault_end=6)
    assert (summary["s200"], summary["s5xx"], summary["s5xx_retry_after"], summary["hung"]) == (3, 2, 1, 1)
    assert summary["streams"] == {"done": 0, "error_event": 0, "silent": 1}
    assert summary["invalid_200"] == 1 and summary["errors_not_in_shape"] == 1
    assert summary["outcomes_by_window"]["during"] == {Outcome.ERROR: 1, Outcome.BAD_ERROR: 1, Outcome.HUNG: 1}


def test_metering_matches_client_ids_to_records():
    traces = [trace(request_id="a"), trace(request_id="b"), trace(status=502, outcome=Outcome.ERROR, request_id="c"),
              trace(kind="bad_key", status=401, outcome=Outcome.ERROR, request_id="d"),
              trace(kind="usage", request_id="e")]  # /v1/usage makes no call record
    records = {"a": {"status": "200"}, "c": {"status": "500"}}
    result = metering(traces, records, before=10, after=12)
    assert result["counter_delta"] == 2 and result["keyed_sent"] == 3
    assert (result["ids_seen"], result["ids_recorded"]) == (3, 2)
    assert (result["client_200"], result["recorded_200"], result["status_mismatch"]) == (2, 1, 1)


def test_soak_growth_per_process_and_in_total():
    start = {1: {"name": "raylet", "rss": 100 << 20, "fds": 50}, 2: {"name": "gone", "rss": 1, "fds": 1}}
    end = {1: {"name": "raylet", "rss": 103 << 20, "fds": 50}, 3: {"name": "new", "rss": 1, "fds": 1}}
    rows = growth(start, end)
    assert {r["name"]: r["state"] for r in rows} == {"raylet": "kept", "gone": "gone", "new": "new"}
    text = table(rows)
    assert "| raylet | 1 | 100.0 | 103.0 | +3.0 % | 50 | 50 | +0.0 % |" in text
    assert "**total (processes alive at both)** | | 100.0 | 103.0 | +3.0 %" in text


@pytest.fixture
async def upstream():
    transport = httpx.ASGITransport(app=fault_upstream.build_app(gap_s=0))
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        yield client


async def test_the_fault_upstream_switches_faults(upstream):
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert completion_in_shape((await upstream.post("/v1/chat/completions", json=chat)).content)
    assert (await upstream.put("/_fault/status500")).status_code == 200
    assert (await upstream.post("/v1/chat/completions", json=chat)).status_code == 500
    await upstream.put("/_fault/malformed")
    assert (await upstream.post("/v1/chat/completions", json=chat)).content == b"{}"
    streamed = await upstream.post("/v1/chat/completions", json={**chat, "stream": True})
    assert streamed.content.startswith(b"data: [1]")
    await upstream.put("/_fault/reset")
    with pytest.raises(fault_upstream.UpstreamReset):
        await upstream.post("/v1/chat/completions", json={**chat, "stream": True, "max_tokens": 5})
    await upstream.put("/_fault/none")
    streamed = await upstream.post("/v1/chat/completions", json={**chat, "stream": True, "max_tokens": 3})
    assert classify_stream(streamed.content) == Outcome.OK
    assert (await upstream.put("/_fault/nonsense")).status_code == 400
