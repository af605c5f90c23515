"""A fast fake upstream that answers every streamed request with one tool call, in both
providers' wire formats: OpenAI's ``POST /v1/chat/completions`` (tool-call chunks) and
Anthropic's ``POST /v1/messages`` (``tool_use`` block with ``input_json_delta`` events). The
call's ~200 characters of arguments stream in ``FRAGMENTS`` pieces with no gap; every stream is
pre-encoded so the upstream costs as little as possible.

    python -m benchmarks.tool_upstream --port 9100

It checks credentials like the real APIs (``Authorization: Bearer`` for OpenAI; ``x-api-key``
and ``anthropic-version`` for Anthropic) and refuses a request without ``tools`` or ``stream``,
so a gateway that dropped them fails the benchmark instead of measuring something else."""

from __future__ import annotations

import argparse
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

OPENAI_KEY = "sk-bench-upstream"  # systems.UPSTREAM_KEY, what systems.NeuroAPI hands the gateway
ANTHROPIC_KEY = "sk-ant-bench-upstream"
ANTHROPIC_VERSIONS = {"2023-06-01", "2026-10-21"}
TOOL_NAME = "get_weather"
FRAGMENTS = 20
ARGUMENTS = json.dumps({
    "city": "San Francisco", "country": "United States", "unit": "celsius", "days": 7,
    "include": ["temperature", "precipitation", "wind_speed", "humidity"],
    "notes": "Hourly for the first day, then daily.",
})
_CUTS = [i * len(ARGUMENTS) // FRAGMENTS for i in range(FRAGMENTS + 1)]
PIECES = [ARGUMENTS[start:end] for start, end in zip(_CUTS, _CUTS[1:])]


def _data(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def openai_stream(model: str, include_usage: bool) -> list[bytes]:
    """What OpenAI streams for one tool call: name and id in the first chunk, then the arguments."""
    def chunk(delta: dict, finish: str | None = None) -> bytes:
        payload = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "service_tier": "default", "system_fingerprint": "fp_bench",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            payload["usage"] = None
        return _data(payload)

    call = {"index": 0, "id": "call_bench", "type": "function",
            "function": {"name": TOOL_NAME, "arguments": ""}}
    first = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
    chunks = [chunk(first)]
    chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in PIECES]
    chunks.append(chunk({}, "tool_calls"))
    if include_usage:
        usage = {"prompt_tokens": 60, "completion_tokens": FRAGMENTS, "total_tokens": 60 + FRAGMENTS}
        chunks.append(_data({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                             "model": model, "choices": [], "usage": usage}))
    return chunks + [b"data: [DONE]\n\n"]


def anthropic_stream(model: str) -> list[bytes]:
    """What Anthropic streams for one tool_use block."""
    def event(payload: dict) -> bytes:
        return f"event: {payload['type']}\n".encode() + _data(payload)

    usage = {"input_tokens": 60, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
             "output_tokens": 1}
    return [
        event({"type": "message_start", "message": {
            "id": "msg_bench", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}}),
        event({"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_bench", "name": TOOL_NAME, "input": {}}}),
        *[event({"type": "content_block_delta", "index": 0,
                 "delta": {"type": "input_json_delta", "partial_json": piece}}) for piece in PIECES],
        event({"type": "content_block_stop", "index": 0}),
        event({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
               "usage": dict(usage, output_tokens=FRAGMENTS)}),
        event({"type": "message_stop"}),
    ]


def build_app() -> Starlette:
    encoded: dict[tuple, list[bytes]] = {}  # (provider, model[, usage]) -> its events, built once

    def stream(key: tuple, make) -> Response:
        if key not in encoded:
            encoded[key] = make()
        return StreamingResponse(_written(encoded[key]), media_type="text/event-stream")

    async def chat(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {OPENAI_KEY}":
            return JSONResponse({"error": {"message": "Incorrect API key provided", "param": None,
                                           "type": "invalid_request_error", "code": "invalid_api_key"}},
                                status_code=401)
        body = json.loads(await request.body())
        if not body.get("stream") or not body.get("tools"):
            return JSONResponse({"error": {"message": "this fake answers streamed tool calls only",
                                           "type": "invalid_request_error", "param": None, "code": None}},
                                status_code=400)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return stream(("openai", body["model"], usage), lambda: openai_stream(body["model"], usage))

    async def messages(request: Request) -> Response:
        def error(status: int, kind: str, message: str) -> Response:
            return JSONResponse({"type": "error", "error": {"type": kind, "message": message}},
                                status_code=status)

        if request.headers.get("x-api-key") != ANTHROPIC_KEY:
            return error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") not in ANTHROPIC_VERSIONS:
            return error(400, "invalid_request_error", "anthropic-version header is required")
        body = json.loads(await request.body())
        if "max_tokens" not in body:
            return error(400, "invalid_request_error", "max_tokens: Field required")
        if not body.get("stream") or not body.get("tools"):
            return error(400, "invalid_request_error", "this fake answers streamed tool calls only")
        return stream(("anthropic", body["model"]), lambda: anthropic_stream(body["model"]))

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/messages", messages, methods=["POST"])])


async def _written(events: list[bytes]):
    for event in events:  # one write per event, 0 ms apart, as a server flushes them
        yield event


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
