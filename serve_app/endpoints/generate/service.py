"""``POST /v1/generate`` as plain Python: the request becomes a chat body, goes the shared call
path (``serve_app.endpoints.model_calls``: routing, scopes, fallback, metering), and the answer
comes back as text: one JSON object, or ``delta`` events ending with a ``done`` event that
carries the usage and its price."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from actors.keys.store import VerifiedKey
from actors.metering.call_meter import CallMeter
from core.errors import GatewayError, upstream_error
from core.money import priced_json
from core.sse import SSEDecoder, encode_named
from serve_app.endpoints.generate.schema import parse_generate_request
from serve_app.endpoints.model_calls import ModelAnswer, ModelCalls, ModelRequest, Reshape


def generate_request(raw: bytes) -> ModelRequest:
    parsed = parse_generate_request(raw)
    return ModelRequest(parsed.model or parsed.mode, parsed.mode, parsed.stream, parsed.chat_body(),
                        wants_usage_in_stream=True)


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    return {name: usage.get(name, 0) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}


def generation(completion: dict[str, Any], mode: str | None, cost_units: str) -> bytes:
    """A chat.completion as NeuroAPI's own answer."""
    try:
        choice = completion["choices"][0]
        text = choice["message"].get("content") or ""
        answer = {"id": completion["id"], "mode": mode, "model": completion["model"], "text": text,
                  "finish_reason": choice.get("finish_reason") or "stop", "usage": _usage(completion.get("usage") or {})}
    except (KeyError, IndexError, TypeError, AttributeError):
        raise upstream_error("The upstream answer has no text.") from None
    return priced_json(answer, cost_units)


class TextStream:
    """A chat completion's SSE (OpenAI's chunks, ``[DONE]``, or the gateway's error event) as
    NeuroAPI's own events: ``delta`` ``{"text"}`` per content delta, then ``done`` with the
    usage (priced, exactly as the backend priced it), or ``error``."""

    def __init__(self, mode: str | None):
        self._decoder = SSEDecoder(max_line_bytes=1 << 62)  # our own backends' output: bounded already
        self._mode = mode
        self._done: dict[str, Any] = {"id": "", "mode": mode, "model": "", "finish_reason": "stop",
                                      "usage": _usage({})}
        self._cost = "0"

    def feed(self, piece: bytes) -> bytes:
        out = []
        for event in self._decoder.feed(piece):
            if event.data == "[DONE]":
                out.append(encode_named("done", priced_json(self._done, self._cost)))
                continue
            chunk = json.loads(event.data, parse_float=Decimal)  # cost_units stays exact
            if "error" in chunk:
                out.append(encode_named("error", json.dumps(chunk)))
                continue
            self._done["id"] = chunk.get("id") or self._done["id"]
            self._done["model"] = chunk.get("model") or self._done["model"]
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    out.append(encode_named("delta", json.dumps({"text": text}, ensure_ascii=False)))
                if choice.get("finish_reason"):
                    self._done["finish_reason"] = choice["finish_reason"]
            usage = chunk.get("usage")
            if usage:
                self._done["usage"] = _usage(usage)
                self._cost = str(usage.get("cost_units", self._cost))
        return b"".join(out)


def _reshape(request: ModelRequest, native: bool, mode: str | None) -> Reshape:
    return TextStream(mode).feed


class GenerateService:
    def __init__(self, calls: ModelCalls):
        self._calls = calls

    async def answer(self, meter: CallMeter, authenticate: Callable[[], Awaitable[VerifiedKey]],
                     read_body: Callable[[], Awaitable[bytes]]) -> tuple[ModelAnswer, bytes]:
        """The shared call's answer, and (not streamed) NeuroAPI's own JSON for it."""
        answer = await self._calls.answer(meter, authenticate, read_body, generate_request, reshape=_reshape)
        if answer.events is not None:
            return answer, b""
        try:
            completion = json.loads(answer.body)
        except ValueError:
            raise GatewayError(502, "The upstream answer is not JSON.", "server_error", "upstream_error") from None
        return answer, generation(completion, meter.mode or None, answer.cost_units)
