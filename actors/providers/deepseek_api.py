"""DeepSeek's OpenAI-compatible API: ``POST {base_url}/chat/completions``, Bearer auth.

Same wire format as OpenAI with a smaller parameter set: no ``seed``, ``user`` or ``n``, no
``developer`` role (sent as ``system``, which means the same), and ``max_tokens`` rather than
``max_completion_tokens``. Reasoner deltas carry ``reasoning_content``; they pass through."""

from __future__ import annotations

from typing import Any

from actors.providers.openai_api import OpenAIAdapter
from core.backend import UpstreamCall

_NOT_SUPPORTED = ("seed", "user")


class DeepSeekAdapter(OpenAIAdapter):
    @staticmethod
    def unsupported(body: dict[str, Any]) -> str | None:
        for name in _NOT_SUPPORTED:
            if name in body:
                return f"'{name}' is not supported by DeepSeek models"
        return None

    def upstream_body(self, call: UpstreamCall, stream: bool) -> dict[str, Any]:
        body = super().upstream_body(call, stream)
        if "max_completion_tokens" in body:
            body["max_tokens"] = body.pop("max_completion_tokens")
        body["messages"] = [
            dict(m, role="system") if m.get("role") == "developer" else m for m in body["messages"]
        ]
        return body
