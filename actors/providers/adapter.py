"""What every provider adapter provides (request, answer, stream translation), and how an
upstream's failures map to what the caller sees and whether the next candidate may try. The
protocol between the ingress and a backend is ``core.backend``."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from config.catalog import ProviderSpec
from core.backend import UpstreamCall, Usage
from core.errors import GatewayError, upstream_error
from core.sse import SSEEvent, encode


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

    def closing(self, priced: Callable[[dict[str, Any]], bytes]) -> bytes:
        """The stream's last events once it has finished: the usage chunk the caller asked for,
        as JSON with ``usage.cost_units`` (``priced`` encodes a payload so)."""
        return b"" if self.usage_chunk is None else encode(priced(self.usage_chunk))


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
    return upstream_error("The upstream provider sent an unreadable answer.")


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
    return upstream_error(f"The upstream provider failed (HTTP {status})."), True


def failure_in_stream(upstream_error_type: str | None) -> StreamFailed:
    """An error event inside an upstream stream (OpenAI's ``{"error"}``, Anthropic's ``error``)."""
    if upstream_error_type == "rate_limit_error":
        error, _ = failure_for_status(429, None)
    else:
        error = upstream_error("The upstream provider failed while answering.")
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

    def count_request(self, call: UpstreamCall) -> tuple[str, dict[str, str], dict[str, Any]] | None:
        """(url, headers, json body) asking the provider to count a prompt's tokens; None: it cannot."""
        return None

    @staticmethod
    def counted(raw: bytes) -> int:
        """The input token count from the count request's 200 body (Anthropic's shape)."""
        answer = json.loads(raw)
        require(isinstance(answer, dict) and is_count(answer.get("input_tokens")), "input_tokens")
        return answer["input_tokens"]

    def embedding_request(self, call: UpstreamCall) -> tuple[str, dict[str, str], dict[str, Any]] | None:
        """(url, headers, json body) for an embeddings call (``call.body``: the validated request,
        ``input`` always a list); None: this provider has no embeddings API."""
        return None

    def embedded(self, call: UpstreamCall, raw: bytes) -> tuple[bytes, int, Usage]:
        """(float32 little-endian vectors in input order, their dimensions, usage) from the
        embeddings call's 200 body; raises MalformedAnswer for anything else."""
        raise MalformedAnswer("an embeddings answer from a provider without embeddings")

    def __repr__(self) -> str:  # the credential must never reach a log line
        return f"{type(self).__name__}(base_url={self.spec.base_url_str!r})"
