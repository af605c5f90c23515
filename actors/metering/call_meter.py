"""Building one call's metering record in the ingress, whatever way the call ends.

A ``CallMeter`` starts with the request and learns what it can as the call proceeds (key,
mode, backend, bytes, usage); ``finish`` turns it into an ``actors.metering.record.CallRecord``. When
the upstream gave no usage (or the caller left mid-stream, so it never came) the tokens are
estimated from the text that went through, and the record says so. The text itself is read
here, in memory, and never kept."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from actors.metering.record import CallRecord, estimate_tokens
from config.catalog import Price
from core.backend import Usage
from core.errors import GatewayError
from core.sse import SSEDecoder


@dataclass
class CallMeter:
    request_id: str
    timestamp_ms: int
    key_prefix: str = ""
    account_id: str = ""
    mode: str = ""
    backend: str = ""
    model: str = ""
    request_bytes: int = 0
    finetune: str = ""  # "<name>@v<version>"
    price: Price | None = None  # set for a fine-tune: its own, or its base model's
    endpoint: str = ""  # the path called

    @classmethod
    def start(cls, request_id: str, declared_bytes: str | None, endpoint: str = "") -> CallMeter:
        size = int(declared_bytes) if declared_bytes and declared_bytes.isdigit() else 0
        return cls(request_id, int(time.time() * 1000), request_bytes=size, endpoint=endpoint)

    def finish(self, status: int, response_bytes: int, usage: Usage | None, estimated: bool,
               prices: Mapping[str, Price]) -> CallRecord:
        prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        if usage is not None and usage.cost_micro_units is not None:  # priced where it was measured
            cost = usage.cost_micro_units
        else:  # estimated here, or a rejection
            price = self.price or prices.get(self.model)
            cost = (usage.priced(price).cost_micro_units or 0) if usage is not None and price else 0
        return CallRecord(
            request_id=self.request_id, timestamp_ms=self.timestamp_ms, key_prefix=self.key_prefix,
            account_id=self.account_id, status=status, mode=self.mode, backend=self.backend, model=self.model,
            prompt_tokens=prompt, completion_tokens=completion, estimated=estimated,
            cost_micro_units=cost,
            request_bytes=self.request_bytes, response_bytes=response_bytes, finetune=self.finetune,
            endpoint=self.endpoint,
        )


    def rejected(self, error: GatewayError, prices: Mapping[str, Price]) -> CallRecord:
        """The record of a call answered with ``error`` before any answer was streamed."""
        return self.finish(error.status, len(error.rendered()), None, False, prices)


def prompt_text(messages: Iterable[dict]) -> str:
    """The text of a chat request's messages (as the schema dumps them): contents, text parts,
    tool calls' arguments. Images are not text; an estimate leaves them out."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.append(" ".join(p.get("text", "") for p in content))
        parts += [call["function"]["name"] + " " + call["function"]["arguments"] for call in message.get("tool_calls", ())]
    return "\n".join(parts)


def _tool_arguments(message: dict) -> str:
    return "".join(((call.get("function") or {}).get("arguments") or "") for call in message.get("tool_calls") or ())


def _text(content) -> str:
    return content if isinstance(content, str) else ""


def completion_text(body: bytes) -> str:
    try:
        choices = json.loads(body).get("choices") or []
        messages = [c.get("message") or {} for c in choices]
        return "".join(_text(m.get("content")) + _text(m.get("reasoning_content")) + _tool_arguments(m)
                       for m in messages)
    except (ValueError, AttributeError, TypeError, RecursionError):  # never fails a call's record
        return ""


def _anthropic_delta(chunk: dict) -> str:
    """The text of an Anthropic ``content_block_delta`` (a /v1/messages stream relayed as it came)."""
    delta = chunk.get("delta") or {}
    return _text(delta.get("text")) + _text(delta.get("thinking")) + _text(delta.get("partial_json"))


def streamed_text(pieces: Iterable[bytes]) -> str:
    """The content deltas of the SSE chunks that reached the caller (OpenAI's or Anthropic's)."""
    decoder, text = SSEDecoder(max_line_bytes=1 << 62), []  # our own output: bounded already
    for piece in pieces:
        for event in decoder.feed(piece):
            try:
                chunk = json.loads(event.data)
                if chunk.get("type") == "content_block_delta":
                    text.append(_anthropic_delta(chunk))
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text.append(_text(delta.get("content")) + _text(delta.get("reasoning_content"))
                                + _tool_arguments(delta))
            except (ValueError, AttributeError, TypeError, RecursionError):
                continue  # [DONE], an error event
    return "".join(text)


def estimated_usage(prompt: str, completion: str) -> Usage:
    return Usage(estimate_tokens(prompt), estimate_tokens(completion))
