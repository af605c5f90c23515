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


class AnthropicAdapter(ProviderAdapter):
    @staticmethod
    def unsupported(body: dict[str, Any]) -> str | None:
        return refusal(body)

    def _headers(self) -> dict[str, str]:
        return {"x-api-key": self._api_key, "anthropic-version": API_VERSION, "content-type": "application/json"}

    def request(self, call: UpstreamCall, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        if call.native is None:
            body = to_anthropic(call, self.spec.default_max_tokens, stream)
        else:  # a /v1/messages caller's own body, as it came (a mode's candidate names its model)
            body = dict(call.native, model=call.model)
            if stream:
                body["stream"] = True
        return self.spec.base_url_str + "/v1/messages", self._headers(), body

    def count_request(self, call: UpstreamCall) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Anthropic's own count of a ``/v1/messages/count_tokens`` body (``call.native``)."""
        return (self.spec.base_url_str + "/v1/messages/count_tokens", self._headers(),
                dict(call.native or {}, model=call.model))

    def completion(self, call: UpstreamCall, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
        if call.native is not None:
            return native_message(raw)
        return completion_from(json.loads(raw))

    def translator(self, call: UpstreamCall) -> StreamTranslator:
        if call.native is not None:
            return AnthropicPassthrough()
        return AnthropicStreamTranslator(call.client_wants_usage)
