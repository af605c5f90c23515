"""A fast fake OpenAI upstream for benchmarks: answers after ``--latency-ms`` (default 0),
streams SSE chunks ``--gap-ms`` apart. Responses are pre-encoded so the upstream costs as
little as possible.

    python -m benchmarks.upstream --port 9100 --latency-ms 0 --gap-ms 20

A request's ``max_completion_tokens`` (or ``max_tokens``) sets the number of streamed chunks
(default 64)."""

from __future__ import annotations

import argparse
import asyncio
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}).encode()


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }).encode() + b"\n\n"


FIRST, TOKEN, LAST = _chunk({"role": "assistant", "content": ""}), _chunk({"content": "tok "}), _chunk({}, "stop")
USAGE = b'data: {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench-model", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 64, "total_tokens": 69}}\n\n'


def build_app(latency_s: float, gap_s: float) -> Starlette:
    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        if latency_s:
            await asyncio.sleep(latency_s)
        if not body.get("stream"):
            return Response(COMPLETION, media_type="application/json")
        chunks = int(body.get("max_completion_tokens") or body.get("max_tokens") or 64)
        usage = (body.get("stream_options") or {}).get("include_usage")

        async def events():
            yield FIRST
            for _ in range(chunks):
                await asyncio.sleep(gap_s)
                yield TOKEN
            yield LAST
            if usage:
                yield USAGE
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def healthz(request: Request) -> Response:  # HAProxy's health check (benchmarks.edge_cost)
        return Response("ok")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/-/healthz", healthz)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="before the answer or first chunk")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="between streamed chunks")
    args = parser.parse_args()
    uvicorn.run(build_app(args.latency_ms / 1000, args.gap_ms / 1000), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
