"""OpenAI's Chat Completions API: ``POST {base_url}/chat/completions``, Bearer auth.

Our wire format is OpenAI's, so answers pass through byte for byte; the adapter only reads the
usage. A stream always asks for ``stream_options.include_usage`` (so every call can be metered)
and drops the usage-only final chunk unless the caller asked for it too."""

from __future__ import annotations

import json
from typing import Any

from actors.providers.base import (
    ProviderAdapter,
    StreamTranslator,
    UpstreamCall,
    Usage,
    failure_in_stream,
)
from actors.providers.sse import SSEEvent, encode


def usage_from(payload: dict[str, Any]) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


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
            raise failure_in_stream(None) from None
        if "error" in chunk:
            error = chunk["error"]
            raise failure_in_stream(error.get("type") if isinstance(error, dict) else None)
        if not chunk.get("choices") and chunk.get("usage"):
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
        if not isinstance(payload, dict):
            raise ValueError("not a chat.completion object")
        return payload, usage_from(payload)

    def translator(self, call: UpstreamCall) -> StreamTranslator:
        return OpenAIStreamTranslator(call.client_wants_usage)
