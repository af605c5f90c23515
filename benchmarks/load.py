"""Load generation: closed-loop clients that time whole answers, time to first token and the
gaps between streamed chunks. Runs in its own process (see ``overhead.py``)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Samples:
    latency_ms: list[float] = field(default_factory=list)  # whole answer (non-stream) / TTFT (stream)
    gap_ms: list[float] = field(default_factory=list)  # between streamed chunks
    errors: int = 0
    wall_s: float = 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def body(stream: bool, chunks: int) -> bytes:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        request.update(stream=True, max_tokens=chunks)
    return json.dumps(request).encode()


async def _one(client: httpx.AsyncClient, url: str, headers: dict, payload: bytes, stream: bool,
               samples: Samples) -> None:
    started = time.perf_counter()
    try:
        if not stream:
            response = await client.post(url, content=payload, headers=headers)
            if response.status_code != 200:
                samples.errors += 1
                return
            samples.latency_ms.append((time.perf_counter() - started) * 1000)
            return
        async with client.stream("POST", url, content=payload, headers=headers) as response:
            if response.status_code != 200:
                samples.errors += 1
                return
            previous = None
            buffer = b""
            async for piece in response.aiter_raw():
                now = time.perf_counter()
                buffer += piece
                if b"\n\n" not in buffer:
                    continue
                if previous is None:
                    samples.latency_ms.append((now - started) * 1000)
                else:
                    samples.gap_ms.append((now - previous) * 1000)
                previous = now
                buffer = buffer.rsplit(b"\n\n", 1)[1]
    except httpx.HTTPError:
        samples.errors += 1


async def closed_loop(url: str, headers: dict, *, stream: bool, requests: int, concurrency: int,
                      chunks: int = 64, warmup: int = 20) -> Samples:
    payload = body(stream, chunks)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        throwaway = Samples()
        for _ in range(warmup):
            await _one(client, url, headers, payload, stream, throwaway)
        samples = Samples()
        per_worker = requests // concurrency

        async def worker() -> None:
            for _ in range(per_worker):
                await _one(client, url, headers, payload, stream, samples)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        samples.wall_s = time.perf_counter() - started
    return samples


def summary(samples: Samples) -> dict:
    return {
        "n": len(samples.latency_ms), "errors": samples.errors,
        "per_s": len(samples.latency_ms) / samples.wall_s if samples.wall_s else float("nan"),
        "p50": percentile(samples.latency_ms, 50), "p99": percentile(samples.latency_ms, 99),
        "mean": statistics.fmean(samples.latency_ms) if samples.latency_ms else float("nan"),
        "gap_p50": percentile(samples.gap_ms, 50), "gap_p99": percentile(samples.gap_ms, 99),
    }
