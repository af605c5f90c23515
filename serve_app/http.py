"""HTTP plumbing every router shares: the error shape, bounded body reads, credentials from
headers, and the Server-Timing split."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
import asyncio
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import GatewayError, internal_error, service_unavailable
from core.redis_conn import redis_unavailable

logger = logging.getLogger("neuroapi.ingress")


def error_response(error: GatewayError) -> Response:
    # The same bytes as the call record's response_bytes (``CallMeter.rejected``).
    return Response(error.rendered(), status_code=error.status, headers=error.headers, media_type="application/json")


def install_error_handlers(api: FastAPI) -> None:
    """Every failure leaves in OpenAI's error shape, with the right status."""

    @api.exception_handler(GatewayError)
    async def _gateway_error(request: Request, error: GatewayError) -> Response:
        return error_response(error)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {error.detail}"
        return error_response(GatewayError(error.status_code, message, code=code))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> Response:
        return error_response(GatewayError(400, "The request is malformed.", code="invalid_request"))

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        if redis_unavailable(error):  # Redis out of reach (after retries): a 503 to retry, not a crash
            return error_response(service_unavailable())
        # The type only: an exception's text is not ours to vet for secrets or prompt text.
        logger.error("request %s failed: %s", request.headers.get("x-request-id"), type(error).__name__)
        return error_response(internal_error())


def presented_key(request: Request) -> str | None:
    """The bearer credential (API key, session token or admin token), or ``x-api-key``."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, arriving within ``timeout_s``: the edge bounds
    only the request head, so a caller trickling its body would otherwise hold a slot forever."""
    too_large = GatewayError(413, f"The request body is larger than the limit of {limit} bytes.",
                             code="request_too_large")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for piece in request.stream():
                body += piece
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise GatewayError(408, f"The request body did not arrive within {timeout_s:g} s.",
                           code="request_timeout") from None
    return bytes(body)


def raise_if_error(result):
    """Deployments return a GatewayError as a value (it crosses Ray as itself); raise it here."""
    if isinstance(result, GatewayError):
        raise result
    return result


def gateway_ms(started: float, upstream_ms: float) -> float:
    """Time spent in the gateway, not waiting for the upstream, up to the response's start."""
    return max((time.perf_counter() - started) * 1000 - upstream_ms, 0.0)


def server_timing(own_ms: float, upstream_ms: float) -> str:
    return f"gateway;dur={own_ms:.2f}, upstream;dur={upstream_ms:.2f}"
