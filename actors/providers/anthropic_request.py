"""An OpenAI Chat Completions request as an Anthropic Messages request (API version 2026-10-21),
and the reason a request cannot be sent to Claude at all.

Every top-level field of the OpenAI request is either mapped here or refused by name in
``refusal``; a field this module does not know is refused too, so nothing is dropped silently.

Mapped:
- ``system`` / ``developer`` messages → top-level ``system`` (a string; a list of text blocks
  when a part carries ``cache_control``, which is kept).
- Consecutive messages of one role merge into one turn (Anthropic alternates roles); ``tool``
  messages become ``tool_result`` blocks of a user turn, ahead of any user text of that turn.
- Assistant ``tool_calls`` → ``tool_use`` blocks (``input`` = the parsed ``arguments``; empty
  arguments mean ``{}``; anything but a JSON object is refused: Claude's ``input`` is an object).
  An assistant's ``thinking_blocks`` (NeuroAPI's answer field, echoed back) go first in its
  content, unchanged, so a tool loop with thinking continues; ``reasoning_content`` alone cannot
  be restored (no signature) and is not sent. A ``refusal`` (field or part) is sent as text.
- ``image_url`` parts → image blocks: a ``data:`` URL as a base64 source, any other URL as a url
  source (Anthropic fetches it; NeuroAPI never does); in user and tool messages only.
  ``detail`` "auto"/"high" is what Claude does anyway; "low"/"original" are refused.
  ``cache_control`` on a part stays on its block.
- ``tools`` → ``{name, description?, input_schema, strict?}``; ``tool_choice`` auto/none/
  required/named → auto/none/any/tool; ``parallel_tool_calls: false`` →
  ``disable_parallel_tool_use: true`` (auto/none without tools mean nothing and are not sent).
- ``response_format`` json_schema → ``output_config.format`` (Anthropic's structured outputs,
  answered as text). ``json_object`` is refused: Anthropic has no schema-less JSON mode, and
  its structured outputs need closed object schemas (``additionalProperties: false``), so a
  permissive schema is not accepted either. ``text`` is the default.
- ``reasoning_effort`` → thinking. Models of the 4.6 generation on use adaptive thinking with
  ``output_config.effort`` (minimal→low, low, medium, high, xhigh, max); older ones (Haiku/Sonnet/
  Opus 4.5 and before, which have no adaptive mode) get ``thinking.enabled`` with a budget from
  the effort, capped below ``max_tokens`` (thinking counts toward it, as reasoning tokens count
  toward OpenAI's ``max_completion_tokens``). ``none`` → ``thinking: disabled``.
- ``max_completion_tokens`` / ``max_tokens`` → ``max_tokens`` (required; the provider default
  otherwise); ``stop`` → ``stop_sequences``; ``user`` / ``safety_identifier`` →
  ``metadata.user_id``; ``service_tier`` auto → auto, default → standard_only; ``store`` (never
  true) is dropped.

Refused by name: sampling fields at anything but their default (this API version has no
``temperature``/``top_p``: Claude samples at temperature 1, top_p 1), ``seed``, ``n > 1``,
``logprobs``, ``logit_bias``, non-zero penalties, ``verbosity`` other than medium, ``modalities``
other than text, OpenAI's ``metadata`` (Claude's metadata has only a user id), service tiers
other than auto/default, ``prompt_cache_key`` / ``prompt_cache_retention`` (Anthropic caches by
``cache_control`` breakpoints instead), messages' ``name``, non-text/image parts, non-function
tools, and a forced ``tool_choice`` together with thinking (Anthropic allows only auto/none then)."""

from __future__ import annotations

import json
import re
from typing import Any

from core.backend import UpstreamCall

# Models without adaptive thinking (manual thinking budgets only); every later model thinks
# adaptively, and the newest reject manual budgets, so unknown names count as adaptive.
_MANUAL_THINKING_PREFIXES = (
    "claude-3", "claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5", "claude-opus-4-1",
    "claude-opus-4-0", "claude-sonnet-4-0", "claude-opus-4-2025", "claude-sonnet-4-2025",
)
_ADAPTIVE_EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh",
                    "max": "max"}
_THINKING_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768, "max": 65536}
MIN_THINKING_BUDGET = 1024  # Anthropic's floor for budget_tokens

_SERVICE_TIERS = {"auto": "auto", "default": "standard_only"}
_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)

# A field honoured at its default value only, and that default.
_DEFAULT_ONLY = {"temperature": 1, "top_p": 1, "n": 1, "presence_penalty": 0, "frequency_penalty": 0,
                 "logprobs": False, "top_logprobs": 0, "verbosity": "medium", "modalities": ["text"]}
_ALWAYS_REFUSED = ("seed", "metadata", "prompt_cache_key", "prompt_cache_retention")
_MAPPED = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "stop", "user",
    "safety_identifier", "tools", "tool_choice", "parallel_tool_calls", "response_format",
    "reasoning_effort", "service_tier", "store", "logit_bias",
})
KNOWN_FIELDS = _MAPPED | set(_DEFAULT_ONLY) | set(_ALWAYS_REFUSED)


def _no(what: str, why: str = "") -> str:
    return f"{what} is not supported by Claude models" + (f" ({why})" if why else "")


def thinks_adaptively(model: str) -> bool:
    return not model.startswith(_MANUAL_THINKING_PREFIXES)


def _stated_max_tokens(body: dict[str, Any]) -> int | None:
    return body.get("max_completion_tokens") or body.get("max_tokens")


def _tool_input(arguments: Any) -> dict[str, Any] | None:
    """A tool call's ``arguments`` as Claude's ``input`` object (None: not a JSON object)."""
    if not isinstance(arguments, str):
        return None
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _image_refusal(part: dict[str, Any]) -> str | None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        return _no("an image_url part without a url")
    if image.get("detail", "auto") not in ("auto", "high"):
        return _no(f"image_url detail '{image['detail']}'", "Claude sees every image at full detail")
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if not match or match.group(1) not in _IMAGE_MEDIA_TYPES:
            return _no("an image_url data: URL that is not base64 JPEG, PNG, GIF or WebP")
    return None


def _message_refusal(message: dict[str, Any]) -> str | None:
    if "name" in message:
        return _no("'messages[].name'")
    content = message.get("content")
    for part in content if isinstance(content, list) else ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url" and message.get("role") in ("user", "tool"):
            reason = _image_refusal(part)
            if reason:
                return reason
        elif kind != "text" and not (kind == "refusal" and message.get("role") == "assistant"):
            return _no(f"a '{kind}' content part")
    for tool_call in message.get("tool_calls") or ():
        if tool_call.get("type", "function") != "function":
            return _no(f"a '{tool_call.get('type')}' tool call")
        if _tool_input(tool_call.get("function", {}).get("arguments")) is None:
            return _no("assistant tool_calls whose arguments are not a JSON object",
                       "Claude's tool input is an object")
    return None


def refusal(body: dict[str, Any]) -> str | None:
    """Why Claude cannot honour ``body`` as asked (None if it can); names the field."""
    for name in body:
        if name not in KNOWN_FIELDS:
            return _no(f"'{name}'")
    for name, default in _DEFAULT_ONLY.items():
        if name in body and body[name] != default:
            sampling = name in ("temperature", "top_p")
            return _no(f"'{name}'", f"only {json.dumps(default)} is accepted" if sampling else "")
    for name in _ALWAYS_REFUSED:
        if name in body:
            return _no(f"'{name}'")
    if body.get("logit_bias"):
        return _no("'logit_bias'")
    if body.get("store"):
        return _no("'store: true'")
    if "service_tier" in body and body["service_tier"] not in _SERVICE_TIERS:
        return _no(f"'service_tier' {body['service_tier']!r}", "only auto and default")
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_object":
        return _no("'response_format' json_object", "send a json_schema")
    json_schema = response_format.get("json_schema") or {}
    if response_format.get("type") == "json_schema" and "schema" not in json_schema:
        return _no("'response_format' json_schema without a schema")
    for tool in body.get("tools") or ():
        if tool.get("type") != "function":
            return _no(f"a '{tool.get('type')}' tool")
    if body.get("tool_choice") not in (None, "auto", "none") and not body.get("tools"):
        return _no("a required or named 'tool_choice' without 'tools'")
    effort = body.get("reasoning_effort")
    if effort is not None and effort != "none":
        if effort not in _THINKING_BUDGET:
            return _no(f"'reasoning_effort' {effort!r}")
        stated = _stated_max_tokens(body)
        if stated is not None and stated <= MIN_THINKING_BUDGET:
            return _no("'reasoning_effort' with max_completion_tokens of 1024 or less",
                       "thinking takes at least 1024 of them")
        if body.get("tool_choice") not in (None, "auto", "none"):
            return _no("a required or named 'tool_choice' with 'reasoning_effort'",
                       "while thinking, Claude accepts only auto or none")
    for message in body.get("messages") or ():
        reason = _message_refusal(message)
        if reason:
            return reason
    return None


# -- content ---------------------------------------------------------------------------------
def _text_block(part: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part["text"]}
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    url = part["image_url"]["url"]
    match = _DATA_URL.fullmatch(url) if url.startswith("data:") else None
    source = ({"type": "base64", "media_type": match.group(1), "data": match.group(2)} if match
              else {"type": "url", "url": url})
    block: dict[str, Any] = {"type": "image", "source": source}
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _blocks(content: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [_image_block(part) if part["type"] == "image_url"
            else {"type": "text", "text": part["refusal"]} if part["type"] == "refusal"  # an assistant's
            else _text_block(part) for part in content]


def _system(messages: list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    contents = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    if not contents:
        return None
    cached = any("cache_control" in part for c in contents if isinstance(c, list) for part in c)
    if cached:  # only blocks can carry a cache breakpoint
        return [block for content in contents for block in _blocks(content)]
    return "\n\n".join(c if isinstance(c, str) else "".join(p["text"] for p in c) for c in contents)


def _assistant_content(message: dict[str, Any]) -> str | list[dict[str, Any]]:
    content = message.get("content")
    if content is None and isinstance(message.get("refusal"), str):
        content = message["refusal"]
    thinking = message.get("thinking_blocks") or []
    tool_calls = message.get("tool_calls") or []
    if not thinking and not tool_calls and content is not None:
        return content if isinstance(content, str) else _blocks(content)
    uses = [{"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
             "input": _tool_input(call["function"].get("arguments", ""))} for call in tool_calls]
    return [*thinking, *_blocks(content), *uses]


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    return {"type": "tool_result", "tool_use_id": message["tool_call_id"],
            "content": content if isinstance(content, str) else _blocks(content)}


def _turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role in ("system", "developer"):
            continue
        if role == "tool":
            role, content = "user", [_tool_result(message)]
        elif role == "assistant":
            content = _assistant_content(message)
        else:
            content = message["content"]
            content = content if isinstance(content, str) else _blocks(content)
        if turns and turns[-1]["role"] == role:
            previous = turns[-1]
            if isinstance(previous["content"], str):
                previous["content"] = _blocks(previous["content"])
            previous["content"] += _blocks(content) if isinstance(content, str) else content
        else:
            turns.append({"role": role, "content": content})
    return turns


# -- parameters ------------------------------------------------------------------------------
def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    converted: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if "description" in function:
        converted["description"] = function["description"]
    if function.get("strict") is not None:
        converted["strict"] = function["strict"]
    return converted


def _tool_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if choice is None and parallel is not False:
        return None
    if isinstance(choice, dict):
        converted: dict[str, Any] = {"type": "tool", "name": choice["function"]["name"]}
    else:
        converted = {"type": {"required": "any", "none": "none"}.get(choice or "auto", "auto")}
    if parallel is False and converted["type"] != "none":
        converted["disable_parallel_tool_use"] = True
    return converted


def _reasoning(request: dict[str, Any], model: str, effort: str, caller_max: int | None) -> None:
    if effort == "none":
        request["thinking"] = {"type": "disabled"}
    elif thinks_adaptively(model):
        request["thinking"] = {"type": "adaptive"}
        request.setdefault("output_config", {})["effort"] = _ADAPTIVE_EFFORT[effort]
    else:
        if caller_max is None and request["max_tokens"] <= MIN_THINKING_BUDGET:
            # Only a configured default this small gets here (a caller's is refused): make room.
            request["max_tokens"] += MIN_THINKING_BUDGET
        budget = min(_THINKING_BUDGET[effort], request["max_tokens"] - 1)
        request["thinking"] = {"type": "enabled", "budget_tokens": max(budget, MIN_THINKING_BUDGET)}


def to_anthropic(call: UpstreamCall, default_max_tokens: int, stream: bool) -> dict[str, Any]:
    """The Messages request for ``call.body``, which ``refusal`` has accepted."""
    body = call.body
    caller_max = _stated_max_tokens(body)
    request: dict[str, Any] = {
        "model": call.model,
        "messages": _turns(body["messages"]),
        "max_tokens": caller_max or default_max_tokens,
    }
    system = _system(body["messages"])
    if system is not None:
        request["system"] = system
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    user = body.get("user") or body.get("safety_identifier")
    if user:
        request["metadata"] = {"user_id": user}
    if body.get("tools"):
        request["tools"] = [_tool(tool) for tool in body["tools"]]
    choice = _tool_choice(body)
    if choice is not None and body.get("tools"):
        request["tool_choice"] = choice
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        request["output_config"] = {"format": {"type": "json_schema",
                                               "schema": response_format["json_schema"]["schema"]}}
    if body.get("reasoning_effort") is not None:
        _reasoning(request, call.model, body["reasoning_effort"], caller_max)
    if "service_tier" in body:
        request["service_tier"] = _SERVICE_TIERS[body["service_tier"]]
    if stream:
        request["stream"] = True
    return request
