"""The load generator: one phase of load against one URL, run in its own process.

    python -m benchmarks.load '{"url": ..., "headers": {...}, "stream": false, "rate": 100, ..., "output": FILE}'

writes the phase's samples as JSON to FILE. Two shapes of load:

- ``rate`` > 0: open loop. Request *i* is due at ``start + i / rate`` whatever happened to
  the others, and its latency is measured from that scheduled time, so a gateway that falls
  behind shows its queueing instead of slowing the generator down (no coordinated omission).
  Bounded: ``rate * duration_s`` requests, each abandoned (and counted as an error) after
  ``timeout_s``.
- ``rate`` == 0: sequential, ``count`` requests one after another (concurrency 1).

Streams are timed to their first SSE event (time to first token) and between events.
aiohttp rather than httpx: on two cores the generator's own CPU per request matters."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp


def request_body(model: str, stream: bool, chunks: int) -> bytes:
    request = {"model": model, "messages": [{"role": "user", "content": "Say ok."}]}
    if stream:
        request.update(stream=True, max_tokens=chunks)
    return json.dumps(request).encode()


class Phase:
    def __init__(self, spec: dict):
        self.spec = spec
        self.url: str = spec["url"]
        self.headers = {**spec.get("headers", {}), "Content-Type": "application/json"}
        self.stream: bool = spec.get("stream", False)
        self.body = request_body(spec.get("model", "gpt-4o-mini"), self.stream, spec.get("chunks", 64))
        self.timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 10.0))
        self.latency_ms: list[float] = []  # whole answer, or time to first event when streaming
        self.gap_ms: list[float] = []  # between streamed events
        self.errors: dict[str, int] = {}

    def _error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def one(self, session: aiohttp.ClientSession, due: float) -> None:
        try:
            async with session.post(self.url, data=self.body, headers=self.headers, timeout=self.timeout) as response:
                if response.status != 200:
                    await response.read()
                    self._error(f"http {response.status}")
                    return
                if not self.stream:
                    await response.read()
                    self.latency_ms.append((time.perf_counter() - due) * 1000)
                    return
                await self._read_events(response, due)
        except TimeoutError:
            self._error("timeout")
        except aiohttp.ClientError as error:
            self._error(type(error).__name__)

    async def _read_events(self, response: aiohttp.ClientResponse, due: float) -> None:
        previous, buffer, done = None, b"", False
        async for piece in response.content.iter_any():
            now = time.perf_counter()
            buffer += piece
            events = buffer.count(b"\n\n")
            if not events:
                continue
            if previous is None:
                self.latency_ms.append((now - due) * 1000)
            else:
                self.gap_ms.append((now - previous) * 1000)
            previous = now
            done = done or b"data: [DONE]" in buffer
            buffer = buffer.rsplit(b"\n\n", 1)[1]
        if not done:
            self._error("stream ended without [DONE]")

    async def run(self) -> dict:
        connector = aiohttp.TCPConnector(limit=self.spec.get("max_connections", 1000), force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(self.spec.get("warmup", 3 if self.stream else 20)):
                await self.one(session, time.perf_counter())
            self.latency_ms.clear(), self.gap_ms.clear(), self.errors.clear()
            started = time.perf_counter()
            rate = self.spec.get("rate", 0)
            if rate:
                count = int(rate * self.spec["duration_s"])
                tasks = []
                for i in range(count):
                    due = started + i / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(self.one(session, due)))
                await asyncio.gather(*tasks)
            else:
                count = self.spec["count"]
                for _ in range(count):
                    await self.one(session, time.perf_counter())
            wall_s = time.perf_counter() - started
        return {"requests": count, "ok": len(self.latency_ms), "errors": self.errors, "wall_s": wall_s,
                "latency_ms": self.latency_ms, "gap_ms": self.gap_ms}


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        from uvloop import run  # the cheaper event loop, where installed
    except ImportError:
        run = asyncio.run
    Path(spec["output"]).write_text(json.dumps(run(Phase(spec).run())))


if __name__ == "__main__":
    main()
