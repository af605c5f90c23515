"""OpenAI's Chat Completions API: ``POST {base_url}/chat/completions``, Bearer auth.

Our wire format is OpenAI's, so requests and answers pass through: tools, tool_choice,
response_format, image parts, reasoning_effort, logprobs, n, logit_bias, metadata and
service_tier reach OpenAI as the caller sent them. The adapter only removes what OpenAI would
reject (NeuroAPI's own fields on echoed assistant turns, ``cache_control`` on content parts:
OpenAI caches prompts by itself), always sends ``store: false`` (completions are not kept,
not even by the provider), and reads the usage. A stream always asks for
``stream_options.include_usage`` (so every call can be metered) and drops the usage-only final
chunk unless the caller asked for it too.

Passing through is not trusting: every answer and chunk is checked against the documented
shape first (``MalformedAnswer`` otherwise), so a caller never gets a 200 that its SDK cannot
read, and a mode's next candidate can serve instead."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy

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

# NeuroAPI's answer fields that callers echo back on assistant turns (Anthropic's thinking
# and its signature): ours, not OpenAI's, which rejects unknown message fields with a 400.
NEUROAPI_ASSISTANT_FIELDS = ("reasoning_content", "thinking_blocks")

_TEXT_OR_NULL = (str, type(None))


# -- usage ---------------------------------------------------------------------------------
def _detail(usage: dict[str, Any], details_name: str, count_name: str) -> int | None:
    """``usage[details_name][count_name]``: a count, or None where the provider reports none."""
    details = usage.get(details_name)
    if details is None:
        return None
    require(isinstance(details, dict), f"usage.{details_name}")
    count = details.get(count_name)
    require(count is None or is_count(count), f"usage.{details_name}.{count_name}")
    return count


def usage_counts(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The checked ``usage`` object of an answer or chunk, with its two counts present."""
    usage = payload.get("usage")
    if usage is None:
        return None
    require(isinstance(usage, dict), "usage")
    counts = [usage.get(name) or 0 for name in ("prompt_tokens", "completion_tokens")]
    require(all(is_count(count) for count in counts), "usage token counts")
    return usage


def usage_from(payload: dict[str, Any]) -> Usage | None:
    usage = usage_counts(payload)
    if usage is None:
        return None
    return Usage(
        usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0,
        cached_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
        reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
    )


# -- answer shape checks -------------------------------------------------------------------
def _check_text_fields(holder: dict[str, Any], where: str) -> None:
    for name in ("content", "refusal", "reasoning_content"):
        require(isinstance(holder.get(name), _TEXT_OR_NULL), f"{where}.{name}")


def _check_tool_call(tool_call: Any, where: str) -> None:
    require(isinstance(tool_call, dict), where)
    require(isinstance(tool_call.get("id"), str), f"{where}.id")
    require(tool_call.get("type", "function") == "function", f"{where}.type")
    function = tool_call.get("function")
    require(isinstance(function, dict), f"{where}.function")
    require(isinstance(function.get("name"), str), f"{where}.function.name")
    require(isinstance(function.get("arguments"), str), f"{where}.function.arguments")


def _check_tool_call_delta(fragment: Any, where: str) -> None:
    """A streamed fragment: ``index`` always; id, type and name on a call's first fragment;
    ``arguments`` text pieces."""
    require(isinstance(fragment, dict), where)
    require(is_count(fragment.get("index")), f"{where}.index")
    require(isinstance(fragment.get("id"), _TEXT_OR_NULL), f"{where}.id")
    require(fragment.get("type") in (None, "function"), f"{where}.type")
    function = fragment.get("function")
    if function is not None:
        require(isinstance(function, dict), f"{where}.function")
        require(isinstance(function.get("name"), _TEXT_OR_NULL), f"{where}.function.name")
        require(isinstance(function.get("arguments"), _TEXT_OR_NULL), f"{where}.function.arguments")


def _check_choice(choice: Any, holder_name: str) -> dict[str, Any]:
    require(isinstance(choice, dict), "choices[]")
    holder = choice.get(holder_name)
    where = f"choices[].{holder_name}"
    require(isinstance(holder, dict), where)
    _check_text_fields(holder, where)
    require(choice.get("logprobs") is None or isinstance(choice["logprobs"], dict), "choices[].logprobs")
    require(isinstance(choice.get("finish_reason"), _TEXT_OR_NULL), "choices[].finish_reason")
    return holder


def check_completion(payload: Any) -> None:
    """A chat.completion: a non-empty list of choices (``n`` of them), each with a message whose
    content is text or null (a refusal or tool calls), and well-formed tool calls."""
    require(isinstance(payload, dict), "a chat.completion object")
    choices = payload.get("choices")
    require(isinstance(choices, list) and len(choices) > 0, "choices")
    for choice in choices:
        message = _check_choice(choice, "message")
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            require(isinstance(tool_calls, list), "choices[].message.tool_calls")
            for tool_call in tool_calls:
                _check_tool_call(tool_call, "choices[].message.tool_calls[]")


def check_chunk(chunk: Any) -> None:
    """A chat.completion.chunk: choices a list (empty in a usage-only chunk), each delta a dict
    whose text fields are text or null and whose tool-call fragments are well-formed."""
    require(isinstance(chunk, dict), "a chat.completion.chunk object")
    choices = chunk.get("choices")
    require(isinstance(choices, list), "choices")
    for choice in choices:
        delta = _check_choice(choice, "delta")
        fragments = delta.get("tool_calls")
        if fragments is not None:
            require(isinstance(fragments, list), "choices[].delta.tool_calls")
            for fragment in fragments:
                _check_tool_call_delta(fragment, "choices[].delta.tool_calls[]")


# -- request -------------------------------------------------------------------------------
def without_part_cache_control(content: Any) -> Any:
    """Content parts without our ``cache_control`` extension (meant for Anthropic)."""
    if not isinstance(content, list):
        return content
    return [{k: v for k, v in part.items() if k != "cache_control"} if isinstance(part, dict) else part
            for part in content]


def openai_message(message: dict[str, Any],
                   drop: tuple[str, ...] = NEUROAPI_ASSISTANT_FIELDS) -> dict[str, Any]:
    """One message as an OpenAI-compatible API takes it: ``drop``'s fields removed from an
    assistant turn, parts without ``cache_control``."""
    if message.get("role") == "assistant":
        message = {k: v for k, v in message.items() if k not in drop}
    if isinstance(message.get("content"), list):
        message = dict(message, content=without_part_cache_control(message["content"]))
    return message


class OpenAIStreamTranslator(StreamTranslator):
    def __init__(self, client_wants_usage: bool, read_usage=usage_from):
        self._client_wants_usage = client_wants_usage
        self._read_usage = read_usage

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
            self.usage = self._read_usage(chunk)
            if self._client_wants_usage:
                self.usage_chunk = chunk
            return []
        return [encode(event.data)]


class OpenAIAdapter(ProviderAdapter):
    path = "/chat/completions"

    def upstream_body(self, call: UpstreamCall, stream: bool) -> dict[str, Any]:
        body = dict(call.body, model=call.model)
        body["messages"] = [openai_message(m) for m in body.get("messages", [])]
        # max_tokens is deprecated and rejected by reasoning models; this one works for all.
        if "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        # The data policy: OpenAI must not keep the completion either (the schema refuses true).
        body["store"] = False
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

    def read_usage(self, payload: dict[str, Any]) -> Usage | None:
        return usage_from(payload)

    def completion(self, call: UpstreamCall, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
        payload = json.loads(raw)
        check_completion(payload)
        return payload, self.read_usage(payload)

    def translator(self, call: UpstreamCall) -> StreamTranslator:
        return OpenAIStreamTranslator(call.client_wants_usage, self.read_usage)

    # -- embeddings (POST {base_url}/embeddings) ------------------------------------------
    def embedding_request(self, call: UpstreamCall) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Always base64: float32 little-endian, a quarter of the float text's size and exact; the
        ingress writes floats from it when the caller asked for floats."""
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        body = {"model": call.model, "input": call.body["input"], "encoding_format": "base64"}
        body |= {name: call.body[name] for name in ("dimensions", "user") if name in call.body}
        return self.spec.base_url_str + "/embeddings", headers, body

    def embedded(self, call: UpstreamCall, raw: bytes) -> tuple[bytes, int, Usage]:
        """OpenAI's ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
        "usage": {"prompt_tokens", "total_tokens"}}``: one finite vector per input, all one length."""
        payload = json.loads(raw)
        require(isinstance(payload, dict) and payload.get("object") == "list", "a list object")
        count = len(call.body["input"])
        data = payload.get("data")
        require(isinstance(data, list) and len(data) == count, "data (one embedding per input)")
        rows: list[bytes | None] = [None] * count
        for item in data:
            require(isinstance(item, dict) and item.get("object") == "embedding", "data[]")
            index = item.get("index")
            require(is_count(index) and index < count and rows[index] is None, "data[].index")
            encoded = item.get("embedding")
            require(isinstance(encoded, str), "data[].embedding (base64)")
            rows[index] = base64.b64decode(encoded, validate=True)  # binascii.Error is a ValueError
        dimensions = len(rows[0]) // 4
        require(dimensions > 0 and all(len(row) == 4 * dimensions for row in rows), "data[].embedding length")
        vectors = b"".join(rows)
        require(bool(numpy.isfinite(numpy.frombuffer(vectors, "<f4")).all()), "data[].embedding values")
        usage = payload.get("usage")
        require(isinstance(usage, dict) and is_count(usage.get("prompt_tokens")), "usage.prompt_tokens")
        return vectors, dimensions, Usage(usage["prompt_tokens"], 0)
