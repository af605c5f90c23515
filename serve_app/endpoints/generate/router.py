"""``POST /v1/generate``: HTTP in and out; the work is ``GenerateService``'s."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from actors.metering.call_meter import CallMeter
from serve_app.endpoints.chat.router import COST_HEADER
from serve_app.endpoints.generate.schema import GENERATE_STREAM, GenerateRequest, Generation
from serve_app.gateway import Gateway
from serve_app.http import gateway_ms, read_body, server_timing
from serve_app.openapi import SSE, documented


def generate_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/generate", **documented(
            "Generate text (NeuroAPI's own shape: a prompt, its history, a mode)", request=GenerateRequest,
            response=Generation, stream=SSE(GENERATE_STREAM), auth="api_key", tags=["generate"],
            errors=[400, 402, 403, 404, 408, 413, 429, 502, 503, 504],
            description="The same routing, scopes, metering and no-retention as chat completions: the prompt and "
                        "`message_history` are sent to the model and kept nowhere."))
    async def generate(request: Request) -> Response:
        started = time.perf_counter()
        meter = CallMeter.start(request.headers.get("x-request-id", ""), request.headers.get("content-length"),
                                "/v1/generate")
        answer, body = await gateway.generate.answer(meter, lambda: gateway.callers.api_key(request),
                                                     lambda: read_body(request, *gateway.chat_body_limits))
        own_ms = gateway_ms(started, answer.outcome.upstream_ms)
        gateway.observe_gateway_ms(own_ms, answer.events is not None)
        headers = {"Server-Timing": server_timing(own_ms, answer.outcome.upstream_ms), **answer.headers}
        if answer.events is None:
            return Response(body, media_type="application/json", headers=headers | {COST_HEADER: answer.cost_units})
        return StreamingResponse(answer.events, media_type="text/event-stream",
                                 headers=headers | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router
