"""DeepSeek's OpenAI-compatible API: ``POST {base_url}/chat/completions``, Bearer auth.

Same wire format as OpenAI with a smaller parameter set (api-docs.deepseek.com, "Create Chat
Completion", "Function Calling", "JSON Output", "Thinking Mode", "Context Caching"):

- taken as sent: tools, tool_choice (auto / none / required / a named function), the ``tool``
  role, ``response_format`` text and json_object, logprobs / top_logprobs, stop, temperature,
  top_p, penalties, ``reasoning_effort`` (DeepSeek maps minimal..xhigh onto its own levels);
  ``reasoning_effort: "none"`` becomes its ``thinking: {"type": "disabled"}`` switch;
- renamed: ``max_completion_tokens`` → ``max_tokens``; the ``developer`` role → ``system``
  (which means the same);
- refused by name (they would change the answer, and DeepSeek has no such thing): json_schema
  response_format (JSON Output is json_object only), image parts (text-only chat), ``n > 1``,
  ``logit_bias``, ``seed``, ``user``, ``safety_identifier``, ``service_tier``, ``verbosity`` other
  than medium;
- enforced here: ``parallel_tool_calls: false`` (DeepSeek has no such switch): the answer keeps
  only its first tool call, streamed or not (LangChain's structured output sends it);
- dropped, since they change nothing DeepSeek does: ``store`` (never sent: DeepSeek has no
  stored completions), ``metadata`` (OpenAI's dashboard tags), ``prompt_cache_key`` and
  ``prompt_cache_retention``, ``verbosity: "medium"``, ``modalities: ["text"]``, ``n: 1`` and
  ``parallel_tool_calls: true`` (the defaults), NeuroAPI's ``thinking_blocks`` (Anthropic's)
  and ``cache_control`` on parts (DeepSeek caches prefixes by itself).

``reasoning_content`` on an echoed assistant turn is kept: in thinking mode DeepSeek requires it
back on every turn that called a tool (a 400 otherwise) and ignores it elsewhere. Answers'
``reasoning_content`` (and its deltas) pass through. Usage: ``prompt_cache_hit_tokens`` are the
cached tokens (already inside ``prompt_tokens``, as OpenAI counts them)."""

from __future__ import annotations

import json
from typing import Any

from actors.providers.adapter import StreamTranslator, is_count, require
from actors.providers.openai_api import (
    OpenAIAdapter,
    OpenAIStreamTranslator,
    openai_message,
    usage_counts,
    usage_from,
)
from core.backend import UpstreamCall, Usage
from core.sse import SSEEvent, encode

_NOT_SUPPORTED = ("seed", "user", "safety_identifier", "logit_bias", "service_tier")
# Not DeepSeek's: OpenAI's stored-completion tags and cache hints, which change nothing in
# DeepSeek's answer (it caches prefixes by itself); "medium" verbosity and text output are its default.
_NOT_SENT = ("store", "metadata", "prompt_cache_key", "prompt_cache_retention", "verbosity", "modalities")


def _has_image_part(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") != "text" for part in content)


def _refused(name: str) -> str:
    return f"'{name}' is not supported by DeepSeek models"


def _single_call(body: dict[str, Any]) -> bool:
    return body.get("parallel_tool_calls") is False


class FirstToolCallOnly(OpenAIStreamTranslator):
    """A stream with only the first tool call's deltas (index 0): ``parallel_tool_calls: false``."""

    def feed(self, event: SSEEvent) -> list[bytes]:
        out = super().feed(event)
        if not out or '"tool_calls"' not in event.data:
            return out
        chunk = json.loads(event.data)
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("tool_calls"):
                delta["tool_calls"] = [call for call in delta["tool_calls"] if call.get("index") == 0]
                if not delta["tool_calls"]:
                    del delta["tool_calls"]
        choices = [c for c in chunk["choices"] if c["delta"] or c.get("finish_reason")]
        return [encode(json.dumps(dict(chunk, choices=choices)))] if choices else []


class DeepSeekAdapter(OpenAIAdapter):
    @staticmethod
    def unsupported(body: dict[str, Any]) -> str | None:
        for name in _NOT_SUPPORTED:
            if name in body:
                return _refused(name)
        if body.get("verbosity", "medium") != "medium":
            return _refused("verbosity")
        if (body.get("n") or 1) > 1:
            return "'n' greater than 1 is not supported by DeepSeek models"
        if (body.get("response_format") or {}).get("type") == "json_schema":
            return ("'response_format' json_schema is not supported by DeepSeek models "
                    "(json_object is)")
        if any(_has_image_part(m) for m in body.get("messages", [])):
            return "image content parts are not supported by DeepSeek models"
        return None

    def upstream_body(self, call: UpstreamCall, stream: bool) -> dict[str, Any]:
        body = super().upstream_body(call, stream)
        for name in (*_NOT_SENT, "n", "parallel_tool_calls"):
            body.pop(name, None)  # unsupported() has refused every value that is not a default
        if "max_completion_tokens" in body:
            body["max_tokens"] = body.pop("max_completion_tokens")
        if body.get("reasoning_effort") == "none":
            del body["reasoning_effort"]
            body["thinking"] = {"type": "disabled"}
        body["messages"] = [
            openai_message(dict(m, role="system") if m.get("role") == "developer" else m,
                           drop=("thinking_blocks",))
            for m in call.body.get("messages", [])
        ]
        return body

    def completion(self, call: UpstreamCall, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
        payload, usage = super().completion(call, raw)
        if _single_call(call.body):
            for choice in payload["choices"]:
                if choice["message"].get("tool_calls"):
                    choice["message"]["tool_calls"] = choice["message"]["tool_calls"][:1]
        return payload, usage

    def translator(self, call: UpstreamCall) -> StreamTranslator:
        if _single_call(call.body):
            return FirstToolCallOnly(call.client_wants_usage, self.read_usage)
        return super().translator(call)

    def read_usage(self, payload: dict[str, Any]) -> Usage | None:
        usage = usage_from(payload)
        if usage is None:
            return None
        hits = usage_counts(payload).get("prompt_cache_hit_tokens")
        if hits is None:
            return usage
        require(is_count(hits), "usage.prompt_cache_hit_tokens")
        return Usage(usage.prompt_tokens, usage.completion_tokens, cached_tokens=hits,
                     reasoning_tokens=usage.reasoning_tokens)
