"""What crosses between the ingress and a provider proxy, and what every adapter provides.

The ingress sends an ``UpstreamCall`` (an already validated OpenAI-style body). A proxy answers
a non-streamed call with a ``Completion`` or an ``UpstreamFailure``; a streamed call yields
``StreamStart`` (or ``UpstreamFailure``), then ``bytes`` (our SSE, batched per network read),
then one ``StreamEnd``. ``retriable`` tells the ingress whether the next candidate may try."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from actors.errors import GatewayError
from actors.providers.sse import SSEEvent
from actors.scopes import UNRESTRICTED, Scope
from config.catalog import ProviderSpec
from models.engine import Adapter


@dataclass(frozen=True, slots=True, repr=False)
class UpstreamCall:
    request_id: str
    model: str  # the concrete model this provider serves
    body: dict[str, Any]  # the caller's validated OpenAI-style request
    client_wants_usage: bool = False  # stream_options.include_usage from the caller
    scope: Scope = UNRESTRICTED  # the account's: a proxy the scope forbids refuses before connecting
    adapter: Adapter | None = None  # a fine-tune to apply (in-house models only)
    # Seconds left of the request's deadline when this attempt starts (relative: clocks differ
    # between machines); None = no deadline. The proxy stops the attempt when it passes.
    timeout_s: float | None = None
    # Another candidate follows: a non-streamed attempt then gets only the provider's
    # first-byte bound, so the fallback still has time. The last one may use the whole deadline.
    more_candidates: bool = False

    def __repr__(self) -> str:  # the body is the prompt: never in a log line or a traceback
        return f"UpstreamCall(request_id={self.request_id!r}, model={self.model!r})"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True, slots=True, repr=False)
class Completion:
    body: bytes  # an OpenAI chat.completion, JSON
    usage: Usage | None
    upstream_ms: float

    def __repr__(self) -> str:  # the body is the completion text
        return f"Completion(usage={self.usage!r}, upstream_ms={self.upstream_ms:.2f})"


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    error: GatewayError
    retriable: bool
    upstream_ms: float


@dataclass(frozen=True, slots=True)
class StreamStart:
    upstream_ms: float  # until the first byte of the answer
    first: bytes  # the first SSE events, already in OpenAI's chunk shape


@dataclass(frozen=True, slots=True)
class StreamEnd:
    usage: Usage | None
    error: GatewayError | None = None  # set when the upstream failed after the first byte


class StreamFailed(Exception):
    """The upstream reported an error inside its stream."""

    def __init__(self, error: GatewayError, retriable: bool):
        super().__init__(error.message)
        self.error = error
        self.retriable = retriable


class StreamTranslator(ABC):
    """Turns one upstream SSE stream into OpenAI ``chat.completion.chunk`` events.

    The usage-only final chunk a caller asked for (``stream_options.include_usage``) is not
    returned by ``feed`` but kept in ``usage_chunk``: the client sends it last, priced."""

    usage: Usage | None = None
    usage_chunk: dict[str, Any] | None = None
    finished: bool = False

    @abstractmethod
    def feed(self, event: SSEEvent) -> list[bytes]:
        """Our encoded SSE events for one upstream event; raises StreamFailed, or
        MalformedAnswer for an event that is not in the provider's documented shape."""

    def is_keepalive(self, event: SSEEvent) -> bool:
        """An event that only says the connection is alive: it does not reset the idle bound."""
        return False


class MalformedAnswer(ValueError):
    """An upstream answer (or stream event) not in the provider's documented shape."""


def require(condition: bool, what: str) -> None:
    """Shape checks on an upstream's answer; ``what`` names the field, never its value."""
    if not condition:
        raise MalformedAnswer(what)


def is_count(value: Any) -> bool:
    """A token count: a non-negative int (JSON true/false are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def unreadable() -> GatewayError:
    return GatewayError(502, "The upstream provider sent an unreadable answer.", "server_error",
                        "upstream_error")


def refused_by_scope(call: UpstreamCall, provider: str, in_house: bool) -> UpstreamFailure | None:
    """A backend's own check of the call's scope, before it connects or generates anything."""
    if call.scope.allows(provider, in_house):
        return None
    return UpstreamFailure(GatewayError(403, f"This account's scope ({call.scope.rule()}) forbids this backend.",
                                        type="permission_error", code="scope_forbids"),
                           retriable=False, upstream_ms=0.0)


_COST_PLACEHOLDER = "\x00cost_units\x00"


def priced_json(payload: dict[str, Any], cost_units: str) -> bytes:
    """``payload`` as JSON with ``usage.cost_units`` set to the exact decimal ``cost_units``
    (a JSON number written from its text: no float ever holds money)."""
    usage = payload.setdefault("usage", {})
    usage["cost_units"] = _COST_PLACEHOLDER
    return json_bytes(payload).replace(json.dumps(_COST_PLACEHOLDER).encode(), cost_units.encode())


def json_bytes(payload: Any) -> bytes:
    """JSON in UTF-8 as is (not \\u escapes, up to 6 bytes a character), so an answer keeps the
    size the provider sent; a lone surrogate (only ever inside a JSON string) stays escaped."""
    return json.dumps(payload, ensure_ascii=False).encode("utf-8", "backslashreplace")


# Statuses after which another candidate may well succeed: our side of the provider is at
# fault (credential, model catalogue, capacity), not the caller's request.
NOT_RETRIABLE = frozenset({400, 413, 422})


def failure_for_status(status: int, upstream_message: str | None) -> tuple[GatewayError, bool]:
    """Map an upstream HTTP error to what the caller sees, and whether to try the next one.

    Only a 400/413/422's message is passed on (it is about the caller's own request); others
    can name our provider account or echo a masked credential."""
    if status in NOT_RETRIABLE:
        message = "The upstream model rejected the request"
        if upstream_message:
            message += f": {upstream_message[:500]}"
        return GatewayError(status if status == 413 else 400, message, code="upstream_rejected"), False
    if status == 429:
        return GatewayError(
            429, "The upstream provider is rate limiting; retry shortly.",
            type="rate_limit_error", code="upstream_rate_limited",
        ), True
    if status in (408, 504):
        return GatewayError(504, "The upstream provider timed out.", type="server_error",
                            code="upstream_timeout"), True
    return GatewayError(502, f"The upstream provider failed (HTTP {status}).", type="server_error",
                        code="upstream_error"), True


def failure_in_stream(upstream_error_type: str | None) -> StreamFailed:
    """An error event inside an upstream stream (OpenAI's ``{"error"}``, Anthropic's ``error``)."""
    if upstream_error_type == "rate_limit_error":
        error, _ = failure_for_status(429, None)
    else:
        error = GatewayError(502, "The upstream provider failed while answering.", "server_error",
                             "upstream_error")
    return StreamFailed(error, retriable=True)


def error_message_of(body: bytes) -> str | None:
    """``error.message`` from an OpenAI- or Anthropic-shaped error body, if there is one."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


class ProviderAdapter(ABC):
    """How one provider's HTTP API is called and how its answers become OpenAI's."""

    def __init__(self, spec: ProviderSpec, api_key: str):
        self.spec = spec
        self._api_key = api_key

    @staticmethod
    def unsupported(body: dict[str, Any]) -> str | None:
        """Why this provider cannot honour the request as asked (None if it can)."""
        return None

    @abstractmethod
    def request(self, call: UpstreamCall, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        """(url, headers, json body) for the upstream call."""

    @abstractmethod
    def completion(self, call: UpstreamCall, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
        """Our chat.completion (as a dict; the client prices and encodes it) and the usage,
        from the upstream's 200 body."""

    @abstractmethod
    def translator(self, call: UpstreamCall) -> StreamTranslator:
        """A fresh translator for one streamed answer."""

    def __repr__(self) -> str:  # the credential must never reach a log line
        return f"{type(self).__name__}(base_url={self.spec.base_url_str!r})"
