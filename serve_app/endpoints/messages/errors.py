"""Anthropic's error shape for the /v1/messages family: ``{"type": "error", "error": {"type",
"message"}, "request_id"}``, with Anthropic's statuses (its SDK picks the exception class by status:
a 503 of ours is its 529 ``overloaded_error``, which the SDK retries)."""

from __future__ import annotations

import json

from fastapi.responses import Response

from core.errors import GatewayError
from core.sse import encode_named

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OVERLOADED = 529  # Anthropic's "overloaded": where NeuroAPI's OpenAI face says 503


def anthropic_status(status: int) -> int:
    return OVERLOADED if status == 503 else status


def anthropic_error_type(status: int) -> str:
    return _TYPES.get(anthropic_status(status), "api_error")


def anthropic_error_body(error: GatewayError, request_id: str = "") -> dict:
    body = {"type": "error", "error": {"type": anthropic_error_type(error.status), "message": error.message}}
    if request_id:
        body["request_id"] = request_id
    return body


def anthropic_error_response(error: GatewayError, request_id: str = "") -> Response:
    content = json.dumps(anthropic_error_body(error, request_id), ensure_ascii=False, separators=(",", ":"))
    return Response(content, status_code=anthropic_status(error.status), headers=error.headers,
                    media_type="application/json")


def anthropic_error_event(error: GatewayError) -> bytes:
    """A failure after the first byte, as Anthropic's stream carries one (its SDK raises on it)."""
    return encode_named("error", json.dumps(anthropic_error_body(error), ensure_ascii=False))
