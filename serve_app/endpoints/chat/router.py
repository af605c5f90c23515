"""``POST /v1/chat/completions``: HTTP in and out; the work is ``ChatService``'s."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from actors.metering.call_meter import CallMeter
from serve_app.endpoints.chat.schema import CHAT_STREAM, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from serve_app.gateway import Gateway
from serve_app.http import gateway_ms, read_body, server_timing
from serve_app.openapi import SSE, documented

COST_HEADER = "X-NeuroAPI-Cost-Units"  # a non-streamed answer's price (also usage.cost_units)


def chat_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    def timing(started: float, upstream_ms: float, stream: bool) -> str:
        own_ms = gateway_ms(started, upstream_ms)
        gateway.observe_gateway_ms(own_ms, stream)
        return server_timing(own_ms, upstream_ms)

    @router.post("/v1/chat/completions", **documented(
            "Create a chat completion (OpenAI's Chat Completions API)", request=ChatCompletionRequest,
            response=ChatCompletion, stream=SSE(CHAT_STREAM, ChatCompletionChunk, done="[DONE]"), auth="api_key", tags=["chat"],
            errors=[400, 402, 403, 404, 408, 413, 429, 502, 503, 504],
            description="`model` names a model or a mode (or send `mode`); a mode tries its candidates in order. "
                        "A non-streamed answer also carries its price in the `X-NeuroAPI-Cost-Units` header."))
    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        meter = CallMeter.start(request.headers.get("x-request-id", ""), request.headers.get("content-length"),
                                "/v1/chat/completions")
        answer = await gateway.chat.answer(meter, lambda: gateway.callers.api_key(request),
                                           lambda: read_body(request, *gateway.chat_body_limits))
        upstream_ms = answer.outcome.upstream_ms
        if answer.events is None:
            return Response(answer.body, media_type="application/json", headers={
                "Server-Timing": timing(started, upstream_ms, stream=False), COST_HEADER: answer.cost_units,
                **answer.headers})
        return StreamingResponse(answer.events, media_type="text/event-stream", headers={
            "Server-Timing": timing(started, upstream_ms, stream=True),
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **answer.headers,
        })

    return router
