"""What a chat request asks of a model beyond plain text, as named capabilities.

Each model has a capability set in the catalog (``config/defaults/capabilities.yaml``; an
in-house model's follows from its engine and ``tool_parser``). A mode skips a candidate that
lacks one the request uses; an explicitly named model that lacks one is a 400 naming the field:
nothing a caller sends is silently dropped."""

from __future__ import annotations

from typing import Any

TOOLS = "tools"  # the model decides whether to call a tool (tool_choice auto)
FORCED_TOOLS = "forced_tools"  # tool_choice "required" or a named function
PARALLEL_TOOLS = "parallel_tools"  # several tool calls in one answer, asked for explicitly
JSON_OBJECT = "json_object"  # response_format {"type": "json_object"}
JSON_SCHEMA = "json_schema"  # response_format {"type": "json_schema"}
VISION = "vision"  # image parts
LOGPROBS = "logprobs"  # logprobs / top_logprobs
N = "n"  # several choices (n > 1)
REASONING = "reasoning"  # reasoning_effort
LOGIT_BIAS = "logit_bias"

ALL = frozenset({TOOLS, FORCED_TOOLS, PARALLEL_TOOLS, JSON_OBJECT, JSON_SCHEMA, VISION, LOGPROBS, N,
                 REASONING, LOGIT_BIAS})


def _has_image(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in messages)


def required(body: dict[str, Any]) -> dict[str, str]:
    """The capabilities ``body`` (a validated Chat Completions request) uses, each with the
    request field that uses it (for the caller's error message), in a stable order."""
    needs: dict[str, str] = {}
    if body.get("tools"):
        choice = body.get("tool_choice", "auto")
        if choice == "auto":
            needs[TOOLS] = "tools"
        elif choice != "none":  # "required" or {"type": "function", ...}
            needs[FORCED_TOOLS] = "tool_choice"
        if body.get("parallel_tool_calls") is True and choice != "none":
            needs[PARALLEL_TOOLS] = "parallel_tool_calls"
    kind = (body.get("response_format") or {}).get("type")
    if kind == "json_object":
        needs[JSON_OBJECT] = "response_format"
    elif kind == "json_schema":
        needs[JSON_SCHEMA] = "response_format"
    if _has_image(body.get("messages", [])):
        needs[VISION] = "image_url"
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        needs[LOGPROBS] = "logprobs"
    if (body.get("n") or 1) > 1:
        needs[N] = "n"
    if "reasoning_effort" in body:
        needs[REASONING] = "reasoning_effort"
    if body.get("logit_bias"):
        needs[LOGIT_BIAS] = "logit_bias"
    return needs


def lacking(capabilities: frozenset[str], body: dict[str, Any], model: str) -> str | None:
    """Why a model with ``capabilities`` cannot serve ``body`` (naming the field), or None."""
    for capability, field in required(body).items():
        if capability not in capabilities:
            return f"'{field}' is not supported by model '{model}'"
    return None
