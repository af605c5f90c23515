"""OpenAI's Chat Completions API: ``POST {base_url}/chat/completions``, Bearer auth.

Our wire format is OpenAI's, so answers pass through byte for byte; the adapter only reads the
usage. A stream always asks for ``stream_options.include_usage`` (so every call can be metered)
and drops the usage-only final chunk unless the caller asked for it too.

Passing through is not trusting: every answer and chunk is checked against the documented
shape first (``MalformedAnswer`` otherwise), so a caller never gets a 200 that its SDK cannot
read, and a mode's next candidate can serve instead."""

from __future__ import annotations

import json
from typing import Any

from actors.providers.adapter import (
    MalformedAnswer,
    ProviderAdapter,
    StreamTranslator,
    failure_in_stream,
    is_count,
    require,
)
from core.backend import UpstreamCall, Usage
from core.sse import SSEEvent, encode


def usage_from(payload: dict[str, Any]) -> Usage | None:
    usage = payload.get("usage")
    if usage is None:
        return None
    require(isinstance(usage, dict), "usage")
    counts = [usage.get(name) or 0 for name in ("prompt_tokens", "completion_tokens")]
    require(all(is_count(count) for count in counts), "usage token counts")
    return Usage(*counts)


def _check_content(holder: Any, where: str) -> None:
    require(isinstance(holder, dict), where)
    require(isinstance(holder.get("content"), (str, type(None))), f"{where}.content")


def check_completion(payload: Any) -> None:
    """A chat.completion: a non-empty list of choices, each with a message whose content is
    text or null (a refusal or a tool call)."""
    require(isinstance(payload, dict), "a chat.completion object")
    choices = payload.get("choices")
    require(isinstance(choices, list) and len(choices) > 0, "choices")
    for choice in choices:
        require(isinstance(choice, dict), "choices[]")
        _check_content(choice.get("message"), "choices[].message")


def check_chunk(chunk: Any) -> None:
    """A chat.completion.chunk: choices a list (empty in a usage-only chunk), each delta a dict
    whose content is text or null."""
    require(isinstance(chunk, dict), "a chat.completion.chunk object")
    choices = chunk.get("choices")
    require(isinstance(choices, list), "choices")
    for choice in choices:
        require(isinstance(choice, dict), "choices[]")
        _check_content(choice.get("delta"), "choices[].delta")


class OpenAIStreamTranslator(StreamTranslator):
    def __init__(self, client_wants_usage: bool):
        self._client_wants_usage = client_wants_usage

    def feed(self, event: SSEEvent) -> list[bytes]:
        if event.data == "[DONE]":
            self.finished = True
            return []
        try:
            chunk = json.loads(event.data)
        except ValueError:
            raise MalformedAnswer("an SSE event that is not JSON") from None
        if isinstance(chunk, dict) and "error" in chunk:
            error = chunk["error"]
            raise failure_in_stream(error.get("type") if isinstance(error, dict) else None)
        check_chunk(chunk)
        if not chunk["choices"] and chunk.get("usage"):
            self.usage = usage_from(chunk)
            if self._client_wants_usage:
                self.usage_chunk = chunk
            return []
        return [encode(event.data)]


class OpenAIAdapter(ProviderAdapter):
    path = "/chat/completions"

    def upstream_body(self, call: UpstreamCall, stream: bool) -> dict[str, Any]:
        body = dict(call.body, model=call.model)
        # max_tokens is deprecated and rejected by reasoning models; this one works for all.
        if "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        body.pop("stream_options", None)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream", None)
        return body

    def request(self, call: UpstreamCall, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        return self.spec.base_url_str + self.path, headers, self.upstream_body(call, stream)

    def completion(self, call: UpstreamCall, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
        payload = json.loads(raw)
        check_completion(payload)
        return payload, usage_from(payload)

    def translator(self, call: UpstreamCall) -> StreamTranslator:
        return OpenAIStreamTranslator(call.client_wants_usage)
