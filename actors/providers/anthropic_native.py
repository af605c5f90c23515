"""Anthropic's own answers, relayed unchanged to a ``POST /v1/messages`` caller.

A /v1/messages call that goes to a Claude model sends the caller's body as it came
(``UpstreamCall.native``), so nothing is lost in a round trip through OpenAI's shape. The answer
goes back as Anthropic sent it; the gateway only reads its usage (to meter it) and adds
``usage.cost_units``: to the message, or to the stream's ``message_delta``, which is therefore
held until ``message_stop`` (nothing comes between them) and sent priced by ``closing``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from actors.providers.adapter import StreamTranslator, failure_in_stream, require
from actors.providers.anthropic_answer import Counts, event_data
from core.backend import Usage
from core.sse import SSEEvent, encode_named


def native_message(raw: bytes) -> tuple[dict[str, Any], Usage]:
    """The message as Anthropic sent it, and its usage (``MalformedAnswer`` if it is not one)."""
    message = json.loads(raw)
    require(isinstance(message, dict) and message.get("type") == "message", "a message object")
    require(isinstance(message.get("content"), list), "content")
    require("usage" in message, "usage")
    counts = Counts()
    counts.update(message["usage"], "usage")
    return message, counts.usage()


class AnthropicPassthrough(StreamTranslator):
    """Anthropic's events as they came (``ping`` included), reading the usage on the way."""

    def __init__(self) -> None:
        self._counts = Counts()
        self._started = False
        self._delta: dict[str, Any] | None = None  # message_delta, held until message_stop
        self._stop = b""

    def feed(self, event: SSEEvent) -> list[bytes]:
        data = event_data(event)
        kind = data.get("type") or event.event or ""
        if kind == "error":
            error = data.get("error")
            raise failure_in_stream(error.get("type") if isinstance(error, dict) else None)
        if kind == "message_start":
            message = data.get("message")
            require(isinstance(message, dict), "message_start.message")
            self._counts.update(message.get("usage", {}), "message_start.message.usage")
            self._started = True
        elif kind in ("message_delta", "message_stop"):
            require(self._started, f"{kind} before message_start")
            if kind == "message_delta":
                if "usage" in data:
                    self._counts.update(data["usage"], "message_delta.usage")
                self._delta = data
            else:
                self._stop = encode_named(kind, event.data)
                self.finished = True
                self.usage = self._counts.usage()
            return []
        return [encode_named(kind, event.data)] if kind else []

    def is_keepalive(self, event: SSEEvent) -> bool:
        return event.event == "ping"

    def closing(self, priced: Callable[[dict[str, Any]], bytes]) -> bytes:
        delta = b"" if self._delta is None else encode_named("message_delta", priced(self._delta))
        return delta + self._stop

