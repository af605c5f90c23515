"""What the real provider APIs refuse, checked by the fakes (``tests.support.upstreams``) where
that is cheap: unknown OpenAI message fields, tool turns that answer no call, DeepSeek's thinking
rules, Anthropic's turn order, thinking signatures, cache breakpoints and image sources. A
request the real API would refuse must be refused here too, or a gateway bug passes the tests."""

from __future__ import annotations

import hashlib
from typing import Any


def signature_for(thinking: str) -> str:
    return "sig-" + hashlib.sha256(thinking.encode()).hexdigest()[:40]


class Rejected(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


_OPENAI_MESSAGE_FIELDS = {
    "system": {"role", "content", "name"}, "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "refusal", "audio", "function_call",
                  "annotations"},
    "tool": {"role", "content", "tool_call_id"},
}
_OPENAI_PART_FIELDS = {"text": {"type", "text"}, "image_url": {"type", "image_url"},
                       "input_audio": {"type", "input_audio"}, "file": {"type", "file"},
                       "refusal": {"type", "refusal"}}


def check_openai_fields(body: dict[str, Any]) -> None:
    """OpenAI refuses fields it does not know (NeuroAPI's own ones included)."""
    for i, message in enumerate(body.get("messages", [])):
        allowed = _OPENAI_MESSAGE_FIELDS.get(message.get("role"), set())
        for name in message:
            if name not in allowed:
                raise Rejected(f"Unknown parameter: 'messages[{i}].{name}'.", f"messages[{i}].{name}")
        for j, part in enumerate(message.get("content") if isinstance(message.get("content"), list) else []):
            for name in part:
                if name not in _OPENAI_PART_FIELDS.get(part.get("type"), {"type"}):
                    raise Rejected(f"Unknown parameter: 'messages[{i}].content[{j}].{name}'.",
                                   f"messages[{i}].content[{j}].{name}")


def check_openai_tool_turns(body: dict[str, Any]) -> None:
    """Tool messages answer the assistant turn just before them, every one of its calls."""
    messages = body.get("messages", [])
    for i, message in enumerate(messages):
        if message.get("role") == "tool":
            previous = next((m for m in reversed(messages[:i]) if m.get("role") != "tool"), {})
            ids = {c.get("id") for c in previous.get("tool_calls") or []}
            if message.get("tool_call_id") not in ids:
                raise Rejected("Invalid parameter: messages with role 'tool' must be a response to a "
                               "preceeding message with 'tool_calls'.", f"messages.[{i}].role")
        if message.get("role") == "assistant" and message.get("tool_calls"):
            answered = set()
            for later in messages[i + 1:]:
                if later.get("role") != "tool":
                    break
                answered.add(later.get("tool_call_id"))
            missing = [c.get("id") for c in message["tool_calls"] if c.get("id") not in answered]
            if missing:
                raise Rejected("An assistant message with 'tool_calls' must be followed by tool messages "
                               "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                               f"response messages: {', '.join(map(str, missing))}", "messages")


def deepseek_thinking(body: dict[str, Any]) -> bool:
    thinking = (body.get("thinking") or {}).get("type")
    return thinking == "enabled" or ("reasoner" in body.get("model", "") and thinking != "disabled")


def check_deepseek(body: dict[str, Any]) -> None:
    for message in body.get("messages", []):
        for part in message.get("content") if isinstance(message.get("content"), list) else []:
            if part.get("type") != "text":
                raise Rejected("Failed to deserialize the JSON body into the target type: messages: "
                               f"unknown variant `{part.get('type')}`, expected `text`", status=422)
    if (body.get("response_format") or {}).get("type") not in (None, "text", "json_object"):
        raise Rejected("This response_format type is unavailable now")
    if deepseek_thinking(body) and any(m.get("role") == "assistant" and m.get("tool_calls")
                                        and "reasoning_content" not in m for m in body.get("messages", [])):
        raise Rejected("The `reasoning_content` in the thinking mode must be passed back to the API.")


def thinking_on(body: dict[str, Any]) -> bool:
    return (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def check_anthropic(body: dict[str, Any], issued: set[str]) -> None:
    """What the Messages API checks that a translation can get wrong."""
    thinking = body.get("thinking")
    if thinking is not None:
        if thinking.get("type") not in ("enabled", "disabled", "adaptive"):
            raise Rejected("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
        if thinking["type"] == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024:
                raise Rejected("thinking.enabled.budget_tokens: Input should be greater than or equal "
                               "to 1024")
            if budget >= body["max_tokens"]:
                raise Rejected("`max_tokens` must be greater than `thinking.budget_tokens`.")
    if thinking_on(body) and (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        raise Rejected("Thinking may not be enabled when tool_choice forces tool use.")
    format_ = (body.get("output_config") or {}).get("format")
    if format_ is not None and (format_.get("type") != "json_schema"
                                or not isinstance(format_.get("schema"), dict)):
        raise Rejected("output_config.format: a json_schema format needs a schema object")
    messages = body.get("messages", [])
    cache_points = 1 if body.get("cache_control") else 0
    cache_points += sum(1 for t in body.get("tools") or [] if t.get("cache_control"))
    system = body.get("system")
    cache_points += sum(1 for b in system if b.get("cache_control")) if isinstance(system, list) else 0
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    for i, message in enumerate(messages):
        blocks = _blocks(message)
        cache_points += sum(1 for b in blocks if b.get("cache_control"))
        for block in blocks:
            _check_anthropic_block(block, i, issued)
        uses = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        if results:
            previous = _blocks(messages[i - 1]) if i and messages[i - 1].get("role") == "assistant" else []
            asked_for = {b.get("id") for b in previous if b.get("type") == "tool_use"}
            if message.get("role") != "user" or any(r not in asked_for for r in results):
                raise Rejected(f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` "
                               "blocks. Each `tool_result` block must have a corresponding `tool_use` block in the "
                               "previous message.")
            if any(b.get("type") != "tool_result" for b in blocks[:len(results)]):
                raise Rejected(f"messages.{i}.content: `tool_result` blocks must come first in the content.")
        if uses and i + 1 < len(messages):
            answered = {b.get("tool_use_id") for b in _blocks(messages[i + 1])
                        if b.get("type") == "tool_result"}
            if any(u not in answered for u in uses):
                raise Rejected(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                               "immediately after.")
        if uses and i == last_assistant and thinking_on(body) and \
                blocks[0].get("type") not in ("thinking", "redacted_thinking"):
            raise Rejected(f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but "
                           f"found `{blocks[0].get('type')}`. When `thinking` is enabled, a final `assistant` "
                           "message must start with a thinking block.")
    if cache_points > 4:
        raise Rejected(f"A maximum of 4 blocks with cache_control may be provided. Found {cache_points}.")


def _check_anthropic_block(block: dict[str, Any], i: int, issued: set[str]) -> None:
    kind = block.get("type")
    cache = block.get("cache_control")
    if cache is not None and (cache.get("type") != "ephemeral" or cache.get("ttl", "5m") not in ("5m", "1h")):
        raise Rejected(f"messages.{i}.content: cache_control must be ephemeral with ttl 5m or 1h")
    if kind == "thinking":
        signature = block.get("signature")
        if signature not in issued or signature != signature_for(block.get("thinking", "")):
            raise Rejected(f"messages.{i}.content: Invalid `signature` in `thinking` block")
    if kind == "image":
        source = block.get("source") or {}
        valid = (source.get("type") == "base64" and isinstance(source.get("data"), str)
                 and source.get("media_type") in ("image/jpeg", "image/png", "image/gif", "image/webp")) \
            or (source.get("type") == "url" and isinstance(source.get("url"), str))
        if not valid:
            raise Rejected(f"messages.{i}.content: an image source is base64 (media_type, data) or url")


# -- OpenAI's embeddings API -------------------------------------------------------------------
EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
SHORTENING_MODELS = {"text-embedding-3-small", "text-embedding-3-large"}
EMBEDDING_CONTEXT = 8192
EMBEDDING_REQUEST_TOKENS = 300_000
_EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
_INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def embedding_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    """The inputs of an embeddings request as a list (one string or token array: a list of one);
    refuses what OpenAI refuses: an empty string or array, a mix, more than 2048 inputs."""
    value = body.get("input")
    if isinstance(value, str) or (isinstance(value, list) and value and all(map(_token, value))):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > 2048:
        raise Rejected(_INVALID_INPUT)
    strings = all(isinstance(item, str) and item for item in value)
    arrays = all(isinstance(item, list) and item and all(map(_token, item)) for item in value)
    if not (strings or arrays):
        raise Rejected(_INVALID_INPUT)
    return value


def embedding_tokens(item: str | list[int]) -> int:
    """The fake's count: one token per word of a string (as its chat answers count), or the array's length."""
    return (len(item.split()) or 1) if isinstance(item, str) else len(item)


def check_openai_embeddings(body: dict[str, Any]) -> list[str | list[int]]:
    """What POST /v1/embeddings refuses; the inputs as a list when it accepts."""
    for name in body:
        if name not in _EMBEDDING_FIELDS:
            raise Rejected(f"Unrecognized request argument supplied: {name}")
    model = body.get("model")
    if model not in EMBEDDING_DIMENSIONS:
        raise Rejected(f"The model `{model}` does not exist or you do not have access to it.", status=404)
    inputs = embedding_inputs(body)
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise Rejected(f"Invalid value for 'encoding_format': '{body['encoding_format']}'.", "encoding_format")
    if "dimensions" in body:
        if model not in SHORTENING_MODELS:
            raise Rejected("This model does not support specifying dimensions.")
        dimensions = body["dimensions"]
        if not _token(dimensions) or not 1 <= dimensions <= EMBEDDING_DIMENSIONS[model]:
            raise Rejected(f"Invalid value for 'dimensions': must be from 1 to {EMBEDDING_DIMENSIONS[model]}.",
                           "dimensions")
    counts = [embedding_tokens(item) for item in inputs]
    if max(counts) > EMBEDDING_CONTEXT:
        raise Rejected(f"This model's maximum context length is {EMBEDDING_CONTEXT} tokens, however you requested "
                       f"{max(counts)} tokens ({max(counts)} in your prompt; 0 for the completion). Please reduce "
                       "your prompt; or completion length.")
    if sum(counts) > EMBEDDING_REQUEST_TOKENS:
        raise Rejected(f"Requested {sum(counts)} tokens, max {EMBEDDING_REQUEST_TOKENS} tokens per request")
    return inputs


def check_openai_chat_model(model: Any) -> None:
    """An embedding model is not a chat model: OpenAI answers 404."""
    if model in EMBEDDING_DIMENSIONS:
        raise Rejected("This is not a chat model and thus not supported in the v1/chat/completions endpoint. "
                       "Did you mean to use v1/completions?", "model", status=404)
