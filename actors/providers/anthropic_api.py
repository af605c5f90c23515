"""Anthropic's Messages API (``POST {base_url}/v1/messages``), translated both ways.

Request: system and developer messages become the top-level ``system``; consecutive messages
of one role merge into one message of text blocks; ``max_tokens`` (required there) falls back to
the provider's ``default_max_tokens``; ``stop`` becomes ``stop_sequences``; ``user`` becomes
``metadata.user_id``. Answer: text blocks join into one message; ``stop_reason`` maps to
``finish_reason``; input tokens count cache reads and writes too. Stream: ``message_start``,
``content_block_delta``, ``message_delta`` and ``message_stop`` become OpenAI chunks; ``error``
events become a stream error. Answers and events are checked against their documented shapes
(``MalformedAnswer`` otherwise): an OpenAI-shaped body, say, is unreadable, not an empty 200."""

from __future__ import annotations

import json
import time
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

API_VERSION = "2023-06-01"
_NOT_SUPPORTED = ("presence_penalty", "frequency_penalty", "seed")
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _text_of(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, str]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{"type": "text", "text": part["text"]} for part in content]


_INPUT_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _counts(usage: Any, where: str) -> dict[str, int]:
    """A usage object's token counts (absent or null = 0), each a non-negative int."""
    require(isinstance(usage, dict), where)
    counts = {name: usage.get(name) or 0 for name in (*_INPUT_COUNTS, "output_tokens")}
    require(all(is_count(count) for count in counts.values()), f"{where} token counts")
    return counts


def _input_tokens(usage: dict[str, Any]) -> int:
    return sum(usage[name] for name in _INPUT_COUNTS)


def _event_data(event: SSEEvent) -> dict[str, Any]:
    if not event.data:
        return {}
    try:
        data = json.loads(event.data)
    except ValueError:
        raise MalformedAnswer("an SSE event that is not JSON") from None
    require(isinstance(data, dict), "an event object")
    return data


def _text_blocks(content: Any) -> str:
    require(isinstance(content, list), "content")
    text = []
    for block in content:
        require(isinstance(block, dict) and isinstance(block.get("type"), str), "content[]")
        if block["type"] == "text":
            require(isinstance(block.get("text"), str), "content[].text")
            text.append(block["text"])
    return "".join(text)


def to_anthropic(call: UpstreamCall, default_max_tokens: int, stream: bool) -> dict[str, Any]:
    body = call.body
    system = [_text_of(m["content"]) for m in body["messages"] if m["role"] in ("system", "developer")]
    messages: list[dict[str, Any]] = []
    for message in body["messages"]:
        if message["role"] in ("system", "developer"):
            continue
        if messages and messages[-1]["role"] == message["role"]:
            previous = messages[-1]
            if isinstance(previous["content"], str):
                previous["content"] = _blocks(previous["content"])
            previous["content"] += _blocks(message["content"])
        else:
            content = message["content"]
            messages.append({"role": message["role"],
                             "content": content if isinstance(content, str) else _blocks(content)})
    request: dict[str, Any] = {
        "model": call.model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens,
    }
    if system:
        request["system"] = "\n\n".join(system)
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for name in ("temperature", "top_p"):
        if name in body:
            request[name] = body[name]
    if "user" in body:
        request["metadata"] = {"user_id": body["user"]}
    if stream:
        request["stream"] = True
    return request


def _chunk(message_id: str, model: str, created: int, delta: dict[str, Any],
           finish_reason: str | None = None) -> bytes:
    return encode(json.dumps({
        "id": message_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }))


class AnthropicStreamTranslator(StreamTranslator):
    def __init__(self, client_wants_usage: bool):
        self._client_wants_usage = client_wants_usage
        self._id = ""
        self._model = ""
        self._created = 0
        self._input_tokens = 0
        self._output_tokens = 0
        self._started = False

    def feed(self, event: SSEEvent) -> list[bytes]:
        data = _event_data(event)
        kind = data.get("type") or event.event
        if kind == "message_start":
            message = data.get("message")
            require(isinstance(message, dict), "message_start.message")
            require(isinstance(message.get("id"), str) and isinstance(message.get("model"), str),
                    "message_start.message id and model")
            self._id = "chatcmpl-" + message["id"]
            self._model = message["model"]
            self._created = int(time.time())
            usage = _counts(message.get("usage") or {}, "message_start.message.usage")
            self._input_tokens = _input_tokens(usage)
            self._output_tokens = usage["output_tokens"]
            self._started = True
            return [_chunk(self._id, self._model, self._created, {"role": "assistant", "content": ""})]
        if kind in ("content_block_delta", "message_delta", "message_stop"):
            require(self._started, f"{kind} before message_start")
        if kind == "content_block_delta":
            delta = data.get("delta")
            require(isinstance(delta, dict), "content_block_delta.delta")
            if delta.get("type") == "text_delta":
                require(isinstance(delta.get("text"), str), "content_block_delta.delta.text")
                if delta["text"]:
                    return [_chunk(self._id, self._model, self._created, {"content": delta["text"]})]
            return []
        if kind == "message_delta":
            raw_usage = data.get("usage") or {}
            usage = _counts(raw_usage, "message_delta.usage")
            self._output_tokens = usage["output_tokens"] or self._output_tokens
            if any(raw_usage.get(n) is not None for n in _INPUT_COUNTS):
                self._input_tokens = max(self._input_tokens, _input_tokens(usage))
            delta = data.get("delta") or {}
            require(isinstance(delta, dict), "message_delta.delta")
            reason = delta.get("stop_reason")
            require(isinstance(reason, (str, type(None))), "message_delta.delta.stop_reason")
            if reason:
                return [_chunk(self._id, self._model, self._created, {},
                               FINISH_REASONS.get(reason, "stop"))]
            return []
        if kind == "message_stop":
            self.finished = True
            self.usage = Usage(self._input_tokens, self._output_tokens)
            if self._client_wants_usage:
                self.usage_chunk = {
                    "id": self._id, "object": "chat.completion.chunk", "created": self._created,
                    "model": self._model, "choices": [], "usage": self.usage.as_openai(),
                }
            return []
        if kind == "error":
            error = data.get("error")
            raise failure_in_stream(error.get("type") if isinstance(error, dict) else None)
        return []  # ping, content_block_start/stop, and event types added later

    def is_keepalive(self, event: SSEEvent) -> bool:
        return event.event == "ping"


class AnthropicAdapter(ProviderAdapter):
    @staticmethod
    def unsupported(body: dict[str, Any]) -> str | None:
        for name in _NOT_SUPPORTED:
            if name in body:
                return f"'{name}' is not supported by Anthropic models"
        if body.get("temperature", 0) > 1:
            return "Anthropic models accept a temperature of at most 1"
        return None

    def request(self, call: UpstreamCall, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {
            "x-api-key": self._api_key,
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
        }
        body = to_anthropic(call, self.spec.default_max_tokens, stream)
        return self.spec.base_url_str + "/v1/messages", headers, body

    def completion(self, call: UpstreamCall, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
        message = json.loads(raw)
        require(isinstance(message, dict) and message.get("type") == "message", "a message object")
        require(isinstance(message.get("id"), str) and isinstance(message.get("model"), str), "id and model")
        require("usage" in message, "usage")
        counts = _counts(message["usage"], "usage")
        usage = Usage(_input_tokens(counts), counts["output_tokens"])
        text = _text_blocks(message.get("content"))
        require(isinstance(message.get("stop_reason"), (str, type(None))), "stop_reason")
        body = {
            "id": "chatcmpl-" + message["id"],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": message["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(message.get("stop_reason") or "", "stop"),
            }],
            "usage": usage.as_openai(),
        }
        return body, usage

    def translator(self, call: UpstreamCall) -> StreamTranslator:
        return AnthropicStreamTranslator(call.client_wants_usage)
