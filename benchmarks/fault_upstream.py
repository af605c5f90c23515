"""The benchmark's fake OpenAI upstream (``benchmarks.upstream``'s pre-encoded answers) with a
switchable fault, for ``benchmarks.faults``:

    python -m benchmarks.fault_upstream --port 9100 --gap-ms 20
    curl -X PUT http://127.0.0.1:9100/_fault/hang      # every request from now on hangs
    curl -X PUT http://127.0.0.1:9100/_fault/none      # normal answers again

Faults (they apply to every chat request while set):

- ``hang``: accept the request, never send headers (holds until the caller leaves);
- ``status500``: an OpenAI-shaped 500;
- ``reset``: streams send a few chunks then the connection is aborted (no terminating chunk);
  non-streamed answers are cut the same way mid-body;
- ``malformed``: 200 with ``{}`` (non-stream), or a first SSE event ``[1]`` (stream);
- ``ping_only``: streams send only SSE comments (``: ping``), never an event; non-streamed
  answers hang like ``hang``.

In its own process, like ``benchmarks.upstream``, so it never competes with the harness's GIL."""

from __future__ import annotations

import argparse
import asyncio
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from benchmarks.upstream import COMPLETION, FIRST, LAST, TOKEN, USAGE

FAULTS = ("none", "hang", "status500", "reset", "malformed", "ping_only")
ERROR_500 = json.dumps({"error": {"message": "The server had an error while processing your request.",
                                  "type": "server_error", "param": None, "code": None}}).encode()
HANG_S = 3600.0  # longer than any bound under test; cancelled when the caller leaves


class UpstreamReset(Exception):
    """Raised inside a streaming body: uvicorn aborts the connection without finishing it."""


def build_app(gap_s: float) -> Starlette:
    state = {"fault": "none", "requests": 0}

    async def set_fault(request: Request) -> Response:
        fault = request.path_params["fault"]
        if fault not in FAULTS:
            return Response(f"unknown fault {fault}", status_code=400)
        state["fault"] = fault
        return Response(json.dumps(state), media_type="application/json")

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        state["requests"] += 1
        fault, stream = state["fault"], bool(body.get("stream"))
        if fault == "hang" or (fault == "ping_only" and not stream):
            await asyncio.sleep(HANG_S)
        if fault == "status500":
            return Response(ERROR_500, status_code=500, media_type="application/json")
        if fault == "malformed":
            if stream:
                return Response(b"data: [1]\n\ndata: [DONE]\n\n", media_type="text/event-stream")
            return Response(b"{}", media_type="application/json")
        if not stream:
            if fault == "reset":
                async def cut():
                    yield COMPLETION[: len(COMPLETION) // 2]
                    raise UpstreamReset()
                return StreamingResponse(cut(), media_type="application/json")
            return Response(COMPLETION, media_type="application/json")
        chunks = int(body.get("max_completion_tokens") or body.get("max_tokens") or 64)
        usage = (body.get("stream_options") or {}).get("include_usage")

        async def events():
            if fault == "ping_only":
                while True:
                    yield b": ping\n\n"
                    await asyncio.sleep(max(gap_s, 0.05))
            yield FIRST
            for index in range(chunks):
                if fault == "reset" and index == 2:
                    raise UpstreamReset()
                await asyncio.sleep(gap_s)
                yield TOKEN
            yield LAST
            if usage:
                yield USAGE
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/_fault/{fault}", set_fault, methods=["PUT"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="between streamed chunks")
    args = parser.parse_args()
    uvicorn.run(build_app(args.gap_ms / 1000), host="127.0.0.1", port=args.port, log_level="critical",
                access_log=False)


if __name__ == "__main__":
    main()
