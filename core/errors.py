"""The one error type the gateway answers with, in the OpenAI error shape."""

from __future__ import annotations

import json
from typing import Any


class GatewayError(Exception):
    """An error a caller sees: an HTTP status and ``{"error": {message, type, param, code}}``.

    Messages are written for the caller and never carry prompt text, secrets or an upstream's
    raw body, so one can be logged or sent to error tracking as it is."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def __reduce__(self) -> tuple[Any, ...]:  # crosses Ray as a value
        return (
            GatewayError,
            (self.status, self.message, self.type, self.code, self.param, self.headers),
        )

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code!r}, {self.message!r})"

    def rendered(self) -> bytes:
        """The response body, byte for byte: what the caller gets and what its call record
        counts (compact UTF-8 JSON, as Starlette's ``JSONResponse`` renders)."""
        return json.dumps(self.body(), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid_api_key() -> GatewayError:
    return GatewayError(
        401,
        "Invalid API key. Send 'Authorization: Bearer neuro_...' with a key from "
        "'neuroapi keys create'.",
        code="invalid_api_key",
    )


def service_unavailable(retry_after_s: int = 2) -> GatewayError:
    """What cannot be answered while the gateway's store (Redis) is unreachable: retry soon."""
    return GatewayError(
        503,
        f"The gateway cannot reach its data store right now; retry after {retry_after_s} s.",
        type="server_error",
        code="service_unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


def busy(what: str, code: str) -> GatewayError:
    """Work the gateway bounds (password hashing) is at its limit: retry in a moment."""
    return GatewayError(503, f"{what}; retry in a moment.", type="server_error", code=code,
                        headers={"Retry-After": "1"})


def internal_error() -> GatewayError:
    return GatewayError(500, "The gateway failed on this request; quote its X-Request-Id to support.",
                        "server_error", "internal_error")


def upstream_error(message: str) -> GatewayError:
    """A backend failed (or sent what cannot be relayed): 502, and another candidate may serve."""
    return GatewayError(502, message, "server_error", "upstream_error")


def model_not_found(name: str, param: str | None = "model") -> GatewayError:
    return GatewayError(404, f"The model or mode '{name}' does not exist. GET /v1/models lists what you can use.",
                        code="model_not_found", param=param)


def scope_forbids(rule: str, asked_for: str | None = None) -> GatewayError:
    """The account's scope (``rule``, in words) forbids this call: the whole model or mode the
    caller ``asked_for``, or (None) the backend that refuses it before connecting."""
    if asked_for is None:
        message = f"This account's scope ({rule}) forbids this backend."
    else:
        message = f"This account's scope ({rule}) allows no backend for '{asked_for}'. GET /v1/models lists what it may use."
    return GatewayError(403, message, type="permission_error", code="scope_forbids")


def invalid_session() -> GatewayError:
    return GatewayError(401, "Log in first: send 'Authorization: Bearer <token from POST /v1/auth/login>'.",
                        code="invalid_session")
