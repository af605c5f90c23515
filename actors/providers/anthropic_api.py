"""Anthropic's Messages API (``POST {base_url}/v1/messages``), spoken at one pinned API version.

NeuroAPI speaks ``anthropic-version: 2026-10-21``, the version the current official SDK sends:
it is the one Anthropic's newest models and features are documented against (adaptive thinking
with ``output_config.effort``, structured outputs in ``output_config.format``), and the old
``2023-06-01`` would only buy ``temperature``/``top_p``, which the newest Claude models refuse
on either version. The price: a caller's non-default ``temperature`` or ``top_p`` is refused by
name (``anthropic_request.refusal``) rather than forwarded to a 400. The key goes as
``x-api-key``, which every version accepts.

The request translation is ``anthropic_request``; the answer and stream translation is
``anthropic_answer``. A ``POST /v1/messages`` caller's own body (``UpstreamCall.native``) is sent as
it came and answered as Anthropic answered (``anthropic_native``)."""

from __future__ import annotations

import json
from typing import Any

from actors.providers.adapter import ProviderAdapter, StreamTranslator
from actors.providers.anthropic_answer import AnthropicStreamTranslator, completion_from
from actors.providers.anthropic_native import AnthropicPassthrough, native_message
from actors.providers.anthropic_request import refusal, to_anthropic
from core.backend import UpstreamCall, Usage

API_VERSION = "2026-10-21"
# ``anthropic-beta`` features a /v1/messages caller may turn on for a Claude model: those that
# change only how the model answers this one request. Every other beta is left out (and named
# in the answer's ``X-NeuroAPI-Betas-Dropped`` header): some keep data at Anthropic (files,
# memory, threads, containers, MCP), some are billed at other prices than the catalog's (1M
# context, fast mode, fallback credit), and coding assistants send betas of their own that a
# gateway cannot honour, which must not fail their calls.
PASSED_BETAS = frozenset({
    "interleaved-thinking-2025-05-14",
    "fine-grained-tool-streaming-2025-05-14",
    "token-efficient-tools-2025-02-19",
    "output-128k-2025-02-19",
    "structured-outputs-2025-11-13",
    "prompt-caching-2024-07-31",
    "token-counting-2024-11-01",
    "model-context-window-exceeded-2025-08-26",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "thinking-token-count-2026-05-13",
})


def split_betas(header: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(passed, dropped) features of an ``anthropic-beta`` header (comma-separated)."""
    named = [beta.strip() for beta in header.split(",") if beta.strip()]
    return (tuple(b for b in named if b in PASSED_BETAS), tuple(b for b in named if b not in PASSED_BETAS))


class AnthropicAdapter(ProviderAdapter):
    @staticmethod
    def unsupported(body: dict[str, Any]) -> str | None:
        return refusal(body)

    def _headers(self, call: UpstreamCall) -> dict[str, str]:
        headers = {"x-api-key": self._api_key, "anthropic-version": API_VERSION, "content-type": "application/json"}
        if call.native_betas:
            headers["anthropic-beta"] = ",".join(call.native_betas)
        return headers

    def request(self, call: UpstreamCall, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        if call.native is None:
            body = to_anthropic(call, self.spec.default_max_tokens, stream)
        else:  # a /v1/messages caller's own body, as it came (a mode's candidate names its model)
            body = dict(call.native, model=call.model)
            if stream:
                body["stream"] = True
        return self.spec.base_url_str + "/v1/messages", self._headers(call), body

    def count_request(self, call: UpstreamCall) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Anthropic's own count of a ``/v1/messages/count_tokens`` body (``call.native``)."""
        return (self.spec.base_url_str + "/v1/messages/count_tokens", self._headers(call),
                dict(call.native or {}, model=call.model))

    def completion(self, call: UpstreamCall, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
        if call.native is not None:
            return native_message(raw)
        return completion_from(json.loads(raw))

    def translator(self, call: UpstreamCall) -> StreamTranslator:
        if call.native is not None:
            return AnthropicPassthrough()
        return AnthropicStreamTranslator(call.client_wants_usage)
