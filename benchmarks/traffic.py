"""Mixed, traced traffic for the fault and soak runs, in its own process:

    python -m benchmarks.traffic '{"base": "http://127.0.0.1:8000", "key": "neuro_...",
        "mix": {"chat": 50, "stream": 2, "bad_key": 0.2, "models": 1, "usage": 0.5},
        "duration_s": 30, "timeout_s": 30, "output": FILE}'

Open loop per kind, as ``benchmarks.load`` does (request *i* of a kind is due at
``start + i / rate`` whatever happened to the others), but every request is traced: kind, wall
clock sent and done (``time.time()``, so the harness can place it against a fault's window),
status, X-Request-Id, and what the caller saw (``Outcome``). A request with no complete answer
within ``timeout_s`` is ``hung``. The output is a JSON list of ``Trace`` rows."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from benchmarks.load import request_body


class Outcome:
    OK = "ok"  # 200 whose body is the endpoint's shape (a stream: ended with [DONE], no error event)
    INVALID_200 = "invalid 200"  # 200 whose body is not the endpoint's shape (e.g. a relayed `{}`)
    ERROR = "error"  # an HTTP error in OpenAI's shape with an X-Request-Id
    BAD_ERROR = "error, not in shape"  # an HTTP error without the shape or the X-Request-Id
    STREAM_ERROR_EVENT = "stream cut: error event"  # the stream ended with `data: {"error": ...}`
    STREAM_TRUNCATED = "stream cut: silent"  # ended with neither [DONE] nor an error event
    HUNG = "hung"  # no complete answer within timeout_s
    CONNECTION = "connection error"  # refused, reset, or a broken chunked read


@dataclass
class Trace:
    kind: str
    sent: float
    done: float
    status: int  # 0 when no status arrived
    outcome: str
    request_id: str = ""
    retry_after: bool = False


def error_in_shape(body: bytes) -> bool:
    try:
        error = json.loads(body)["error"]
        return isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error
    except (ValueError, KeyError, TypeError):
        return False


def completion_in_shape(body: bytes) -> bool:
    try:
        message = json.loads(body)["choices"][0]["message"]
        return isinstance(message.get("content"), str)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False


def classify_stream(raw: bytes) -> str:
    """What a caller of a 200 stream saw, from every byte it received."""
    saw_error = saw_done = False
    for event in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                saw_done = True
            else:
                try:
                    saw_error = saw_error or (isinstance(payload := json.loads(data), dict) and "error" in payload)
                except ValueError:
                    pass
    if saw_error:
        return Outcome.STREAM_ERROR_EVENT
    return Outcome.OK if saw_done else Outcome.STREAM_TRUNCATED


class Traffic:
    def __init__(self, spec: dict):
        self.spec = spec
        self.base = spec["base"].rstrip("/")
        self.auth = {"Authorization": f"Bearer {spec['key']}"}
        self.timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 30.0))
        model, chunks = spec.get("model", "gpt-4o-mini"), spec.get("chunks", 20)
        self.bodies = {"chat": request_body(model, False, chunks), "stream": request_body(model, True, chunks)}
        self.traces: list[Trace] = []

    def _request(self, kind: str) -> tuple[str, str, dict, bytes | None]:
        json_type = {"Content-Type": "application/json"}
        if kind in ("chat", "stream"):
            return "POST", "/v1/chat/completions", {**self.auth, **json_type}, self.bodies[kind]
        if kind == "bad_key":  # well formed, never issued
            bad = {"Authorization": f"Bearer neuro_{secrets.token_urlsafe(32)}", **json_type}
            return "POST", "/v1/chat/completions", bad, self.bodies["chat"]
        if kind == "models":
            return "GET", "/v1/models", self.auth, None
        if kind == "usage":
            return "GET", "/v1/usage", self.auth, None
        raise ValueError(f"unknown kind {kind}")

    async def one(self, session: aiohttp.ClientSession, kind: str) -> None:
        method, path, headers, body = self._request(kind)
        trace = Trace(kind, time.time(), 0.0, 0, Outcome.HUNG)
        try:
            async with session.request(method, self.base + path, data=body, headers=headers,
                                       timeout=self.timeout) as response:
                trace.status = response.status
                trace.request_id = response.headers.get("X-Request-Id", "")
                trace.retry_after = "Retry-After" in response.headers
                raw = await response.read()
                if response.status != 200:
                    shaped = error_in_shape(raw) and bool(trace.request_id)
                    trace.outcome = Outcome.ERROR if shaped else Outcome.BAD_ERROR
                elif kind == "stream":
                    trace.outcome = classify_stream(raw)
                elif kind == "chat":
                    trace.outcome = Outcome.OK if completion_in_shape(raw) else Outcome.INVALID_200
                else:
                    trace.outcome = Outcome.OK
        except TimeoutError:
            trace.outcome = Outcome.HUNG
        except aiohttp.ClientError:
            trace.outcome = Outcome.CONNECTION
        trace.done = time.time()
        self.traces.append(trace)

    async def _kind(self, session: aiohttp.ClientSession, kind: str, rate: float, started: float,
                    tasks: list[asyncio.Task]) -> None:
        for i in range(int(rate * self.spec["duration_s"])):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(session, kind)))

    async def run(self) -> list[Trace]:
        connector = aiohttp.TCPConnector(limit=self.spec.get("max_connections", 2000))
        async with aiohttp.ClientSession(connector=connector) as session:
            started, tasks = time.perf_counter(), []
            await asyncio.gather(*(self._kind(session, kind, rate, started, tasks)
                                   for kind, rate in self.spec["mix"].items() if rate > 0))
            await asyncio.gather(*tasks)
        return self.traces


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        from uvloop import run  # the cheaper event loop, where installed
    except ImportError:
        run = asyncio.run
    traces = run(Traffic(spec).run())
    Path(spec["output"]).write_text(json.dumps([asdict(t) for t in traces]))


if __name__ == "__main__":
    main()
