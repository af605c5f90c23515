"""``POST /v1/embeddings``: HTTP in and out; the work is ``EmbeddingService``'s."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from actors.metering.call_meter import CallMeter
from serve_app.endpoints.chat.router import COST_HEADER
from serve_app.endpoints.embeddings.schema import EmbeddingRequest, EmbeddingsResponse
from serve_app.gateway import Gateway
from serve_app.http import gateway_ms, read_body, server_timing
from serve_app.openapi import documented


def embeddings_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/embeddings", **documented(
            "Create embeddings (OpenAI's Embeddings API)", request=EmbeddingRequest, response=EmbeddingsResponse,
            auth="api_key", tags=["embeddings"], errors=[400, 402, 403, 404, 408, 413, 429, 502, 503, 504],
            description="`model` names an embedding model (GET /v1/models marks them `\"embeddings\": true`); "
                        "modes are not offered, as vectors from different models cannot be compared. Billed on "
                        "input tokens; the price is also in the `X-NeuroAPI-Cost-Units` header."))
    async def embeddings(request: Request) -> Response:
        started = time.perf_counter()
        meter = CallMeter.start(request.headers.get("x-request-id", ""), request.headers.get("content-length"),
                                "/v1/embeddings")
        # The body is read once the key is verified, within the general body limit (OpenAI's own
        # bounds, 2048 inputs and 300,000 tokens, fit in it).
        answer = await gateway.embeddings.answer(meter, lambda: gateway.callers.api_key(request),
                                                 lambda: read_body(request, *gateway.body_limits))
        own_ms = gateway_ms(started, answer.upstream_ms)
        return Response(answer.body, media_type="application/json", headers={
            "Server-Timing": server_timing(own_ms, answer.upstream_ms), COST_HEADER: answer.cost_units,
            **answer.headers})

    return router
