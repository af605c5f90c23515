"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: HTTP in and out, every error in
Anthropic's shape (``errors``); the work is ``MessagesService``'s."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
import json
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from actors.metering.call_meter import CallMeter
from actors.providers.anthropic_api import split_betas
from core.errors import GatewayError, internal_error
from serve_app.endpoints.chat.router import COST_HEADER
from serve_app.endpoints.messages.errors import anthropic_error_response
from serve_app.endpoints.messages.schema import (
    MESSAGES_STREAM,
    AnthropicMessage,
    CountTokensRequest,
    MessagesRequest,
    TokenCount,
)
from serve_app.gateway import Gateway
from serve_app.http import gateway_ms, read_body, server_timing
from serve_app.openapi import SSE, documented

logger = logging.getLogger("neuroapi.ingress")
BETAS_DROPPED_HEADER = "X-NeuroAPI-Betas-Dropped"
# Set when count_tokens answers with an estimate (a model whose provider has no count API).
COUNT_HEADER = "X-NeuroAPI-Token-Count"


def messages_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    def start(request: Request, endpoint: str) -> tuple[CallMeter, str, tuple[str, ...], dict[str, str]]:
        request_id = request.headers.get("x-request-id", "")
        meter = CallMeter.start(request_id, request.headers.get("content-length"), endpoint)
        passed, dropped = split_betas(request.headers.get("anthropic-beta", ""))
        headers = {"request-id": request_id}  # where Anthropic's SDK reads a response's request id
        if dropped:
            headers[BETAS_DROPPED_HEADER] = ",".join(dropped)
        return meter, request_id, passed, headers

    @router.post("/v1/messages", **documented(
            "Create a message (Anthropic's Messages API)", request=MessagesRequest, response=AnthropicMessage,
            stream=SSE(MESSAGES_STREAM), auth="api_key", tags=["messages"], error_shape="anthropic",
            errors=[400, 402, 403, 404, 408, 413, 502, 504],
            description="Auth: `x-api-key` or `Authorization: Bearer`. A Claude model gets the body as sent "
                        "(`anthropic-beta` features listed in docs/messages.md pass; others are dropped and named "
                        f"in `{BETAS_DROPPED_HEADER}`); any other model, or a mode (`model` or `mode`), gets it "
                        "translated and answers in this shape."))
    async def messages(request: Request) -> Response:
        started = time.perf_counter()
        meter, request_id, betas, headers = start(request, "/v1/messages")
        try:
            result = await gateway.messages.answer(meter, lambda: gateway.callers.api_key(request),
                                                   lambda: read_body(request, *gateway.chat_body_limits), betas)
        except GatewayError as error:
            return anthropic_error_response(error, request_id)
        answer = result.answer
        own_ms = gateway_ms(started, answer.outcome.upstream_ms)
        gateway.observe_gateway_ms(own_ms, answer.events is not None)
        headers["Server-Timing"] = server_timing(own_ms, answer.outcome.upstream_ms)
        headers |= answer.headers
        if answer.events is None:
            headers[COST_HEADER] = answer.cost_units
            return Response(result.body, media_type="application/json", headers=headers)
        headers |= {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(answer.events, media_type="text/event-stream", headers=headers)

    @router.post("/v1/messages/count_tokens", **documented(
            "Count a message request's input tokens", request=CountTokensRequest, response=TokenCount, auth="api_key",
            tags=["messages"], error_shape="anthropic", errors=[400, 403, 404, 408, 413, 502, 504],
            description="The body of a message request, without `max_tokens` or `stream`. Claude: Anthropic's own count; "
                        f"in-house models: their tokenizer and chat template (`{COUNT_HEADER}: exact`); other "
                        "models: an estimate of 4 bytes a token (`estimated`)."))
    async def count_tokens(request: Request) -> Response:
        meter, request_id, betas, headers = start(request, "/v1/messages/count_tokens")
        try:
            tokens, estimated = await gateway.messages.count_tokens(
                meter, lambda: gateway.callers.api_key(request),
                lambda: read_body(request, *gateway.chat_body_limits), betas)
        except Exception as error:  # every failure in Anthropic's shape, metered
            if not isinstance(error, GatewayError):
                logger.error("count_tokens %s failed: %s", request_id, type(error).__name__)
                error = internal_error()
            gateway.record(meter.rejected(error, gateway.settings.prices))
            return anthropic_error_response(error, request_id)
        body = json.dumps({"input_tokens": tokens}).encode()
        gateway.record(meter.finish(200, len(body), None, False, gateway.settings.prices))
        headers[COUNT_HEADER] = "estimated" if estimated else "exact"
        return Response(body, media_type="application/json", headers=headers)

    return router
