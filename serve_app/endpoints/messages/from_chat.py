"""A Chat Completions answer (any non-Claude backend's, as the gateway relays it) as Anthropic's
message object, and its SSE stream as Anthropic's events.

Message: content blocks in order thinking (``thinking_blocks`` as the backend sent them, else one
block of ``reasoning_content`` with signature ""), text (``content``, then a ``refusal``), and
one ``tool_use`` per tool call (``input`` = the parsed ``arguments``; empty arguments are ``{}``,
anything but a JSON object is ``MalformedAnswer``: the answer cannot be given in Anthropic's
shape). ``finish_reason`` → ``stop_reason`` (``STOP_REASONS``). ``stop_sequence`` is always null
and a stop on a stop sequence reads ``end_turn``: an OpenAI-shaped answer does not say whether
it stopped on one, nor which. Usage: ``input_tokens`` = prompt tokens less cache reads and
writes (Anthropic counts those apart), ``cache_read_input_tokens`` / ``cache_creation_input_tokens``
(0 when not reported), ``output_tokens``, ``output_tokens_details.thinking_tokens`` where reasoning
tokens are reported, and NeuroAPI's ``cost_units`` when the answer carries it. Only choice 0
is read.

Stream (``ChatToAnthropicStream``): ``message_start`` (usage zero: the counts come with
``message_delta``) and one ``ping`` at the first chunk; then one content block at a time:
``reasoning_content`` deltas → a thinking block (``thinking_delta``; a ``thinking_blocks`` delta
adds its ``signature_delta``, or a whole ``redacted_thinking`` block), ``content`` and
``refusal`` deltas → a text block, tool-call fragments → tool_use blocks (``input_json_delta``).
A block is closed before the next opens. Tool calls arrive by index and may interleave: the first
one streams live; one that starts while another call's block is open is buffered and sent whole
(one ``input_json_delta``) when the answer finishes, so an interleaved stream still yields each
call's exact arguments. A fragment for a call whose block was already closed (text came between)
cannot be placed and fails the stream. ``message_delta`` (stop reason and the whole usage) follows
the usage chunk (or ``[DONE]`` if none came); ``message_stop`` follows ``[DONE]``. The gateway's
error event ``{"error": {...}}`` becomes Anthropic's ``error`` event, and the stream ends there."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from actors.providers.adapter import MalformedAnswer, require
from actors.providers.anthropic_request import _tool_input
from core.errors import GatewayError, upstream_error
from core.money import json_bytes, priced_json
from core.sse import SSEDecoder, SSEEvent, encode_named
from serve_app.endpoints.messages.errors import anthropic_error_event

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# The gateway's stream error event has no HTTP status; these say which it would have been.
_STATUS_BY_CODE = {"upstream_timeout": 504, "upstream_rate_limited": 429, "model_overloaded": 503,
                   "service_unavailable": 503, "upstream_rejected": 400, "upstream_error": 502,
                   "internal_error": 500}
_STATUS_BY_TYPE = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                   "rate_limit_error": 429}


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "", "end_turn")


def message_id(chat_id: Any) -> str:
    return "msg_" + (chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) and chat_id else "neuroapi")


def anthropic_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI's usage (prompt tokens include cache reads and writes) in Anthropic's terms."""
    usage = usage or {}
    prompt_details = usage.get("prompt_tokens_details") or {}
    read = prompt_details.get("cached_tokens") or 0
    write = prompt_details.get("cache_write_tokens") or 0
    result: dict[str, Any] = {
        "input_tokens": max((usage.get("prompt_tokens") or 0) - read - write, 0),
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        result["output_tokens_details"] = {"thinking_tokens": reasoning}
    if usage.get("cost_units") is not None:
        result["cost_units"] = usage["cost_units"]
    return result


def dumps(payload: dict[str, Any]) -> bytes:
    """JSON for a message or event whose ``usage.cost_units`` may be a ``Decimal`` (read with
    ``json.loads(..., parse_float=Decimal)``): written from its exact text, never via a float."""
    cost = (payload.get("usage") or {}).get("cost_units")
    if isinstance(cost, Decimal):
        return priced_json({**payload, "usage": dict(payload["usage"])}, format(cost, "f"))
    return json_bytes(payload)


def _tool_use(call: Any) -> dict[str, Any]:
    require(isinstance(call, dict) and isinstance(call.get("function"), dict), "tool_calls[]")
    function = call["function"]
    require(isinstance(call.get("id"), str) and isinstance(function.get("name"), str), "tool_calls[] id and name")
    arguments = _tool_input(function.get("arguments", ""))
    require(arguments is not None, "tool_calls[].function.arguments as a JSON object")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}


def _thinking(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = message.get("thinking_blocks")
    if isinstance(blocks, list) and blocks:
        require(all(isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking") for b in blocks),
                "thinking_blocks[]")
        return [dict(block) for block in blocks]
    reasoning = message.get("reasoning_content")
    require(isinstance(reasoning, (str, type(None))), "reasoning_content")
    return [{"type": "thinking", "thinking": reasoning, "signature": ""}] if reasoning else []


def message_from_chat(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """Anthropic's message object for an OpenAI ``chat.completion``; ``model`` is the name the
    caller asked for. Raises ``MalformedAnswer`` for what cannot be given in Anthropic's shape."""
    choices = completion.get("choices")
    require(isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict), "choices[0]")
    message = choices[0].get("message")
    require(isinstance(message, dict), "choices[0].message")
    content: list[dict[str, Any]] = _thinking(message)
    for name in ("content", "refusal"):
        text = message.get(name)
        require(isinstance(text, (str, type(None))), f"choices[0].message.{name}")
        if text:
            content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    require(isinstance(calls, list), "choices[0].message.tool_calls")
    content += [_tool_use(call) for call in calls]
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choices[0].get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage(completion.get("usage")),
    }


def error_from_event(body: dict[str, Any]) -> GatewayError:
    """The gateway's stream error event (``{"error": {message, type, code}}``) as the error it was."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = error.get("message") if isinstance(error.get("message"), str) else "The upstream stream failed."
    status = _STATUS_BY_CODE.get(error.get("code")) or _STATUS_BY_TYPE.get(error.get("type"), 500)
    return GatewayError(status, message, str(error.get("type") or "server_error"), error.get("code"))


class _ToolCall:
    __slots__ = ("id", "name", "arguments", "state", "block")

    def __init__(self, call_id: str, name: str):
        self.id, self.name = call_id, name
        self.arguments: list[str] = []
        self.state = "buffered"  # "live" (its block is open), "closed" (sent), or "buffered"
        self.block = -1


_ZERO_USAGE = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


class ChatToAnthropicStream:
    """Feed it the OpenAI SSE bytes a backend stream yields (split anywhere), through the
    gateway's own ``data: [DONE]`` or error event; each ``feed`` returns Anthropic's SSE bytes for
    what is complete so far (maybe b""). Never raises on the stream's content: what cannot be
    translated becomes an ``error`` event. ``usage`` is the answer's usage in Anthropic's terms
    once known; ``finished`` is set after ``message_stop`` or an error event."""

    def __init__(self, model: str):
        self.model = model
        self.usage: dict[str, Any] | None = None
        self.finished = False
        self._decoder = SSEDecoder()
        self._started = False
        self._blocks = 0  # blocks opened so far: the next block's index
        self._open: str | None = None  # the open block's kind: "text", "thinking", "tool"
        self._live: _ToolCall | None = None
        self._tools: dict[int, _ToolCall] = {}
        self._finish: str | None = None
        self._blocks_done = False
        self._delta_sent = False

    # -- output --------------------------------------------------------------------------
    @staticmethod
    def _event(kind: str, payload: dict[str, Any]) -> bytes:
        return encode_named(kind, dumps({"type": kind, **payload}))

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._event("content_block_delta", {"index": self._blocks - 1, "delta": delta})

    def _start_block(self, kind: str, block: dict[str, Any]) -> bytes:
        self._open = kind
        self._blocks += 1
        return self._event("content_block_start", {"index": self._blocks - 1, "content_block": block})

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        out: list[bytes] = []
        if self._live is not None:
            self._check_arguments(self._live)
            self._live.state, self._live = "closed", None
        out.append(self._event("content_block_stop", {"index": self._blocks - 1}))
        self._open = None
        return out

    @staticmethod
    def _check_arguments(call: _ToolCall) -> None:
        require(_tool_input("".join(call.arguments)) is not None, "tool_calls[].function.arguments as a JSON object")

    def _message_start(self, chunk_id: Any) -> list[bytes]:
        self._started = True
        message = {"id": message_id(chunk_id), "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": dict(_ZERO_USAGE)}
        return [self._event("message_start", {"message": message}), self._event("ping", {})]

    # -- content -------------------------------------------------------------------------
    def _text(self, text: str) -> list[bytes]:
        out = [] if self._open == "text" else [*self._close(), self._start_block("text", {"type": "text", "text": ""})]
        out.append(self._delta({"type": "text_delta", "text": text}))
        return out

    def _reasoning(self, text: str) -> list[bytes]:
        out = [] if self._open == "thinking" else [
            *self._close(), self._start_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})]
        if text:
            out.append(self._delta({"type": "thinking_delta", "thinking": text}))
        return out

    def _thinking_blocks(self, blocks: Any) -> list[bytes]:
        """Whole thinking blocks (an Anthropic backend's, with their signatures): the open
        thinking block gets its signature; a redacted one is a block of its own."""
        require(isinstance(blocks, list), "delta.thinking_blocks")
        out: list[bytes] = []
        for block in blocks:
            require(isinstance(block, dict), "delta.thinking_blocks[]")
            if block.get("type") == "redacted_thinking":
                require(isinstance(block.get("data"), str), "delta.thinking_blocks[].data")
                out += [*self._close(), self._start_block("redacted", {"type": "redacted_thinking", "data": block["data"]}),
                        *self._close()]
                continue
            require(block.get("type") == "thinking" and isinstance(block.get("signature"), str),
                    "delta.thinking_blocks[] signature")
            if self._open != "thinking":
                out += self._reasoning(block.get("thinking") or "")
            if block["signature"]:
                out.append(self._delta({"type": "signature_delta", "signature": block["signature"]}))
            out += self._close()
        return out

    def _tool_fragment(self, fragment: Any) -> list[bytes]:
        require(isinstance(fragment, dict) and isinstance(fragment.get("index"), int), "delta.tool_calls[].index")
        function = fragment.get("function") or {}
        require(isinstance(function, dict), "delta.tool_calls[].function")
        arguments = function.get("arguments") or ""
        require(isinstance(arguments, str), "delta.tool_calls[].function.arguments")
        out: list[bytes] = []
        call = self._tools.get(fragment["index"])
        if call is None:
            require(isinstance(fragment.get("id"), str) and isinstance(function.get("name"), str),
                    "delta.tool_calls[] id and name on a call's first fragment")
            call = self._tools[fragment["index"]] = _ToolCall(fragment["id"], function["name"])
            if self._open != "tool":  # no other call streaming: this one goes live
                out += self._close()
                out.append(self._start_block("tool", {"type": "tool_use", "id": call.id, "name": call.name,
                                                      "input": {}}))
                call.state, self._live = "live", call
        require(call.state != "closed", "tool call fragments after the call's block was closed")
        if arguments:
            call.arguments.append(arguments)
            if call.state == "live":
                out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _end_blocks(self) -> list[bytes]:
        """The answer is complete: close the open block, send the buffered tool calls whole."""
        if self._blocks_done:
            return []
        self._blocks_done = True
        out = self._close()
        for call in self._tools.values():
            if call.state != "buffered":
                continue
            self._check_arguments(call)
            out.append(self._start_block("tool", {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}))
            if call.arguments:
                out.append(self._delta({"type": "input_json_delta", "partial_json": "".join(call.arguments)}))
            call.state = "closed"
            out += self._close()
        return out

    def _message_delta(self) -> list[bytes]:
        if self._delta_sent:
            return []
        self._delta_sent = True
        out = self._end_blocks()
        delta = {"stop_reason": stop_reason(self._finish), "stop_sequence": None}
        out.append(self._event("message_delta", {"delta": delta, "usage": self.usage or {"output_tokens": 0}}))
        return out

    # -- input ---------------------------------------------------------------------------
    def _chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        out = [] if self._started else self._message_start(chunk.get("id"))
        choices = chunk.get("choices") or []
        require(isinstance(choices, list), "choices")
        for choice in choices:
            require(isinstance(choice, dict), "choices[]")
            if choice.get("index", 0) != 0:
                continue  # only choice 0 is answered
            delta = choice.get("delta") or {}
            require(isinstance(delta, dict), "choices[].delta")
            require(not (self._blocks_done and any(delta.get(k) for k in ("reasoning_content", "content", "refusal",
                                                                          "tool_calls", "thinking_blocks"))),
                    "content after the finish reason")
            for name in ("reasoning_content", "content", "refusal"):
                require(isinstance(delta.get(name), (str, type(None))), f"delta.{name}")
            if delta.get("reasoning_content"):
                out += self._reasoning(delta["reasoning_content"])
            if delta.get("thinking_blocks"):
                out += self._thinking_blocks(delta["thinking_blocks"])
            for name in ("content", "refusal"):
                if delta.get(name):
                    out += self._text(delta[name])
            for fragment in delta.get("tool_calls") or ():
                out += self._tool_fragment(fragment)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                out += self._end_blocks()
        if isinstance(chunk.get("usage"), dict):
            self.usage = anthropic_usage(chunk["usage"])
            if self._finish is not None:
                out += self._message_delta()
        return out

    def _done(self) -> list[bytes]:
        out = [] if self._started else self._message_start(None)
        out += self._message_delta()
        out.append(self._event("message_stop", {}))
        self.finished = True
        return out

    def _translate(self, event: SSEEvent) -> list[bytes]:
        if event.data == "[DONE]":
            return self._done()
        try:
            data = json.loads(event.data, parse_float=Decimal)
        except ValueError:
            raise MalformedAnswer("an SSE event that is not JSON") from None
        require(isinstance(data, dict), "an event object")
        if "error" in data:
            return self._fail(error_from_event(data))
        return self._chunk(data)

    def _fail(self, error: GatewayError) -> list[bytes]:
        self.finished = True
        return [anthropic_error_event(error)]

    def fail(self, error: GatewayError) -> bytes:
        """Anthropic's ``error`` event for ``error`` (a failure the gateway holds as an error
        rather than as bytes); the stream ends with it."""
        return b"" if self.finished else b"".join(self._fail(error))

    def feed(self, piece: bytes) -> bytes:
        out: list[bytes] = []
        try:
            for event in self._decoder.feed(piece):
                if self.finished:
                    break
                if event.data:
                    out += self._translate(event)
        except (MalformedAnswer, ValueError):
            # Not in the shape promised (a tool call's arguments that are no JSON object, say):
            # the caller gets Anthropic's error event, not a message its SDK cannot read.
            out += self._fail(upstream_error("The upstream model's answer cannot be given in Anthropic's format."))
        return b"".join(out)
