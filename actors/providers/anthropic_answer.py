"""An Anthropic message, or its SSE stream, as an OpenAI ``chat.completion`` or its chunks.

Answer: text blocks join into ``content`` (null when the answer is only tool calls);
``tool_use`` blocks become ``tool_calls`` (id = the tool_use id, ``arguments`` = the input as
JSON); thinking blocks become ``reasoning_content`` (their joined text) and ``thinking_blocks``
(each block as sent, signature included; ``redacted_thinking`` kept as is), which a caller sends
back on its next turn. ``stop_reason`` maps to ``finish_reason``. Usage: prompt tokens are
input + cache reads + cache writes (OpenAI counts cached tokens in the prompt), with the cache
reads and writes and the thinking tokens reported as details when Anthropic reports them.

Stream: ``message_start`` → the role chunk; ``text_delta`` → ``content``; ``thinking_delta`` →
``reasoning_content``, and at the thinking block's ``content_block_stop`` one
``thinking_blocks`` delta with the whole text and its ``signature`` (from ``signature_delta``);
a ``tool_use`` block's start → the call's first fragment (index = its position among the
answer's tool calls, not Anthropic's block index; id, name, empty arguments), each
``input_json_delta`` → an ``arguments`` fragment, in order; ``message_delta`` → the finish
chunk; ``error`` → a stream failure. Answers and events are checked against their documented
shapes (``MalformedAnswer`` otherwise): an OpenAI-shaped body, say, is unreadable, not an
empty 200."""

from __future__ import annotations

import json
import time
from typing import Any

from actors.providers.adapter import (
    MalformedAnswer,
    StreamTranslator,
    failure_in_stream,
    is_count,
    require,
)
from core.backend import Usage
from core.sse import SSEEvent, encode

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_CACHE_COUNTS = ("cache_read_input_tokens", "cache_creation_input_tokens")
_INPUT_COUNTS = ("input_tokens", *_CACHE_COUNTS)


def _finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "stop")


def _count(usage: dict[str, Any], name: str, where: str) -> int | None:
    value = usage.get(name)
    require(value is None or is_count(value), f"{where}.{name}")
    return value


def _thinking_tokens(usage: dict[str, Any], where: str) -> int | None:
    details = usage.get("output_tokens_details")
    if details is None:
        return None
    require(isinstance(details, dict), f"{where}.output_tokens_details")
    return _count(details, "thinking_tokens", f"{where}.output_tokens_details")


class Counts:
    """Anthropic's token counts as they arrive (``message_delta`` counts are cumulative)."""

    def __init__(self) -> None:
        self.input = {name: None for name in _INPUT_COUNTS}
        self.output = 0
        self.thinking: int | None = None

    def update(self, usage: Any, where: str) -> None:
        require(isinstance(usage, dict), where)
        for name in _INPUT_COUNTS:
            value = _count(usage, name, where)
            if value is not None:
                self.input[name] = value
        output = _count(usage, "output_tokens", where)
        self.output = output if output is not None else self.output
        thinking = _thinking_tokens(usage, where)
        self.thinking = thinking if thinking is not None else self.thinking

    def usage(self) -> Usage:
        read, write = (self.input[name] for name in _CACHE_COUNTS)
        prompt = sum(count or 0 for count in self.input.values())
        return Usage(prompt, self.output, cached_tokens=read, cache_write_tokens=write,
                     reasoning_tokens=self.thinking)


def _thinking_block(block: dict[str, Any], where: str) -> dict[str, Any]:
    if block["type"] == "redacted_thinking":
        require(isinstance(block.get("data"), str), f"{where}.data")
        return {"type": "redacted_thinking", "data": block["data"]}
    require(isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str),
            f"{where} thinking and signature")
    return {"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]}


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    require(isinstance(block.get("id"), str) and isinstance(block.get("name"), str),
            "content[] tool_use id and name")
    require(isinstance(block.get("input"), dict), "content[].input")
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": json.dumps(block["input"])}}


def completion_from(message: Any) -> tuple[dict[str, Any], Usage]:
    """Our chat.completion and its usage, from a Messages API answer."""
    require(isinstance(message, dict) and message.get("type") == "message", "a message object")
    require(isinstance(message.get("id"), str) and isinstance(message.get("model"), str), "id and model")
    require("usage" in message, "usage")
    counts = Counts()
    counts.update(message["usage"], "usage")
    require(isinstance(message.get("stop_reason"), (str, type(None))), "stop_reason")
    content = message.get("content")
    require(isinstance(content, list), "content")
    text: list[str] = []
    thinking: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        require(isinstance(block, dict) and isinstance(block.get("type"), str), "content[]")
        kind = block["type"]
        if kind == "text":
            require(isinstance(block.get("text"), str), "content[].text")
            text.append(block["text"])
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(_thinking_block(block, "content[]"))
        elif kind == "tool_use":
            tool_calls.append(_tool_call(block))
    content_text = "".join(text) if text or not tool_calls else None  # null: only tool calls
    reply: dict[str, Any] = {"role": "assistant", "content": content_text, "refusal": None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    if thinking:
        reply["reasoning_content"] = "".join(b.get("thinking", "") for b in thinking)
        reply["thinking_blocks"] = thinking
    usage = counts.usage()
    body = {
        "id": "chatcmpl-" + message["id"],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message["model"],
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": _finish_reason(message.get("stop_reason"))}],
        "usage": usage.as_openai(),
    }
    return body, usage


def event_data(event: SSEEvent) -> dict[str, Any]:
    if not event.data:
        return {}
    try:
        data = json.loads(event.data)
    except ValueError:
        raise MalformedAnswer("an SSE event that is not JSON") from None
    require(isinstance(data, dict), "an event object")
    return data


class _Block:
    """One content block of the streamed answer, between its start and stop events."""

    __slots__ = ("kind", "tool_index", "has_arguments", "start_input", "thinking", "signature", "redacted")

    def __init__(self, kind: str):
        self.kind = kind
        self.tool_index = -1
        self.has_arguments = False
        self.start_input: dict[str, Any] = {}
        self.thinking: list[str] = []
        self.signature = ""
        self.redacted: dict[str, Any] | None = None


class AnthropicStreamTranslator(StreamTranslator):
    def __init__(self, client_wants_usage: bool):
        self._client_wants_usage = client_wants_usage
        self._counts = Counts()
        self._blocks: dict[int, _Block] = {}
        self._tool_calls = 0
        self._started = False
        self._prefix = b""
        self._id = ""
        self._model = ""
        self._created = 0

    # Every chunk shares its envelope: encode it once, and only the delta per chunk.
    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        finish = b"null" if finish_reason is None else json.dumps(finish_reason).encode()
        return encode(self._prefix + json.dumps(delta).encode()
                      + b',"logprobs":null,"finish_reason":' + finish + b"}]}")

    def _start(self, data: dict[str, Any]) -> list[bytes]:
        message = data.get("message")
        require(isinstance(message, dict), "message_start.message")
        require(isinstance(message.get("id"), str) and isinstance(message.get("model"), str),
                "message_start.message id and model")
        self._id = "chatcmpl-" + message["id"]
        self._model = message["model"]
        self._created = int(time.time())
        self._prefix = ('{"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,'
                        '"choices":[{"index":0,"delta":' % (json.dumps(self._id), self._created,
                                                            json.dumps(self._model))).encode()
        self._counts.update(message.get("usage") or {}, "message_start.message.usage")
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, data: dict[str, Any]) -> list[bytes]:
        index, block = data.get("index"), data.get("content_block")
        require(is_count(index) and isinstance(block, dict) and isinstance(block.get("type"), str),
                "content_block_start index and content_block")
        state = self._blocks[index] = _Block(block["type"])
        if state.kind == "text":
            require(isinstance(block.get("text"), str), "content_block_start.content_block.text")
            return [self._chunk({"content": block["text"]})] if block["text"] else []
        if state.kind == "thinking":
            require(isinstance(block.get("thinking"), str), "content_block_start.content_block.thinking")
            state.signature = block.get("signature") or ""
            return self._thinking(state, block["thinking"])
        if state.kind == "redacted_thinking":
            state.redacted = _thinking_block(block, "content_block_start.content_block")
            return []
        if state.kind == "tool_use":
            require(isinstance(block.get("id"), str) and isinstance(block.get("name"), str),
                    "content_block_start.content_block id and name")
            require(isinstance(block.get("input", {}), dict), "content_block_start.content_block.input")
            state.tool_index, state.start_input = self._tool_calls, block.get("input") or {}
            self._tool_calls += 1
            return [self._chunk({"tool_calls": [{
                "index": state.tool_index, "id": block["id"], "type": "function",
                "function": {"name": block["name"], "arguments": ""}}]})]
        return []  # server tool blocks and block types added later carry nothing for the caller

    def _thinking(self, state: _Block, text: str) -> list[bytes]:
        if not text:
            return []
        state.thinking.append(text)
        return [self._chunk({"reasoning_content": text})]

    def _arguments(self, state: _Block, fragment: str) -> list[bytes]:
        if not fragment:
            return []
        state.has_arguments = True
        fragment_delta = {"index": state.tool_index, "function": {"arguments": fragment}}
        return [self._chunk({"tool_calls": [fragment_delta]})]

    def _block_delta(self, data: dict[str, Any]) -> list[bytes]:
        delta = data.get("delta")
        require(isinstance(delta, dict), "content_block_delta.delta")
        kind = delta.get("type")
        if kind == "text_delta":
            require(isinstance(delta.get("text"), str), "content_block_delta.delta.text")
            return [self._chunk({"content": delta["text"]})] if delta["text"] else []
        state = self._blocks.get(data.get("index"))  # type: ignore[arg-type]
        require(state is not None, "content_block_delta for a block that was not started")
        if kind == "input_json_delta":
            require(state.kind == "tool_use" and isinstance(delta.get("partial_json"), str),
                    "content_block_delta.delta.partial_json of a tool_use block")
            return self._arguments(state, delta["partial_json"])
        if kind == "thinking_delta":
            require(state.kind == "thinking" and isinstance(delta.get("thinking"), str),
                    "content_block_delta.delta.thinking of a thinking block")
            return self._thinking(state, delta["thinking"])
        if kind == "signature_delta":
            require(state.kind == "thinking" and isinstance(delta.get("signature"), str),
                    "content_block_delta.delta.signature of a thinking block")
            state.signature = delta["signature"]
        return []  # citations_delta, and delta types added later

    def _block_stop(self, data: dict[str, Any]) -> list[bytes]:
        state = self._blocks.pop(data.get("index"), None)  # type: ignore[arg-type]
        require(state is not None, "content_block_stop for a block that was not started")
        if state.kind == "thinking":
            block = {"type": "thinking", "thinking": "".join(state.thinking), "signature": state.signature}
            return [self._chunk({"thinking_blocks": [block]})]
        if state.redacted is not None:
            return [self._chunk({"thinking_blocks": [state.redacted]})]
        if state.kind == "tool_use" and not state.has_arguments and state.start_input:
            # The whole input came with the block's start and no fragments followed.
            return self._arguments(state, json.dumps(state.start_input))
        return []

    def _message_delta(self, data: dict[str, Any]) -> list[bytes]:
        self._counts.update(data.get("usage") or {}, "message_delta.usage")
        delta = data.get("delta") or {}
        require(isinstance(delta, dict), "message_delta.delta")
        reason = delta.get("stop_reason")
        require(isinstance(reason, (str, type(None))), "message_delta.delta.stop_reason")
        return [self._chunk({}, _finish_reason(reason))] if reason else []

    def _stop(self) -> list[bytes]:
        self.finished = True
        self.usage = self._counts.usage()
        if self._client_wants_usage:
            self.usage_chunk = {
                "id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model, "choices": [], "usage": self.usage.as_openai(),
            }
        return []

    def feed(self, event: SSEEvent) -> list[bytes]:
        data = event_data(event)
        kind = data.get("type") or event.event
        if kind == "message_start":
            return self._start(data)
        if kind == "error":
            error = data.get("error")
            raise failure_in_stream(error.get("type") if isinstance(error, dict) else None)
        handler = self._HANDLERS.get(kind)  # type: ignore[arg-type]
        if handler is None:
            return []  # ping, and event types added later
        require(self._started, f"{kind} before message_start")
        return handler(self, data)

    _HANDLERS = {
        "content_block_start": _block_start,
        "content_block_delta": _block_delta,
        "content_block_stop": _block_stop,
        "message_delta": _message_delta,
        "message_stop": lambda self, _data: self._stop(),
    }

    def is_keepalive(self, event: SSEEvent) -> bool:
        return event.event == "ping"
