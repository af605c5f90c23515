"""An Anthropic Messages request (validated by ``schema``) as the Chat Completions request every
non-Claude backend takes, and the list of what only Claude can honour.

Mapped:
- ``system`` (top level, and ``system`` turns in ``messages``) → a system message: a string stays
  a string, text blocks become text parts (``cache_control`` kept, as the chat schema allows).
- A user turn: its ``tool_result`` blocks first, each a ``tool`` message in order (text as sent;
  ``is_error: true`` prefixes the text with "Error: ", the only way an OpenAI-shaped model learns
  the call failed); then one user message with the rest: text and image parts (base64 → a
  ``data:`` URL, url → that URL), images returned by tool results (a tool message holds text
  only), and documents as text (a plain-text or content source; its title as a first line).
  One text block without ``cache_control`` is sent as a plain string.
- An assistant turn: text → ``content`` (a string, or parts where one has ``cache_control``);
  ``tool_use`` → ``tool_calls`` (``arguments`` = ``json.dumps(input)``); ``thinking`` /
  ``redacted_thinking`` → ``thinking_blocks`` (unchanged) and ``reasoning_content`` (the
  thinking text): OpenAI's adapter drops both, DeepSeek's keeps ``reasoning_content`` (its
  thinking mode requires it back on tool turns).
- ``tools`` → function tools (``parameters`` = ``input_schema``, ``strict`` kept); ``tool_choice``
  auto/any/tool/none → auto/required/named/none; ``disable_parallel_tool_use: true`` →
  ``parallel_tool_calls: false``; auto/none without tools are not sent.
- ``max_tokens`` → ``max_completion_tokens`` (every adapter takes it; it counts reasoning tokens
  as Anthropic's counts thinking); ``stop_sequences`` → ``stop``; ``temperature`` and ``top_p``
  as sent; ``metadata.user_id`` is Claude's alone and not sent (OpenAI's ``safety_identifier`` is
  the nearest, but DeepSeek refuses it, and coding assistants send a user_id on every call: a
  mode would then skip DeepSeek for all of them).
- Reasoning: ``output_config.effort`` → ``reasoning_effort`` as named; otherwise ``thinking``
  enabled → an effort from its budget (below 4096 tokens low, below 16384 medium, else high:
  the inverse of how the chat → Claude translation picks budgets), adaptive → medium.
  ``thinking: disabled`` sends nothing (a model that does not reason is not refused for it) and
  then ``output_config.effort`` is not sent either; ``thinking.display`` is Claude's and ignored.
- ``output_config.format`` → ``response_format`` json_schema named "output" (not ``strict``:
  OpenAI's strict mode refuses schemas Anthropic accepts, such as optional properties).
- ``service_tier`` standard_only → default (auto, the default, is not sent).
- ``stream`` → ``stream`` with ``stream_options.include_usage`` (the answer's usage arrives last).

Dropped with no effect on the answer elsewhere: ``cache_control`` on tools, tool_use blocks and
top level (other providers cache prompts by themselves), citations echoed on text blocks,
``eager_input_streaming``, ``speed: standard``.

Claude only (listed, for the router to refuse or skip the backend): ``top_k``,
``inference_geo``, ``diagnostics``, ``speed: fast``, ``max_tokens: 0`` (a cache warm-up), PDF
documents and documents with citations, more than 4 stop sequences, more than 128 tools or a tool
name over 64 characters (OpenAI's limits), and a last turn from the assistant (prefill: other
models answer a new turn instead of continuing it)."""

from __future__ import annotations

import json
from typing import Any

# OpenAI's limits, where Anthropic allows more.
OPENAI_MAX_STOP = 4
OPENAI_MAX_TOOLS = 128
OPENAI_MAX_NAME = 64

# thinking.budget_tokens → reasoning_effort: the first bound the budget is below.
_EFFORT_BY_BUDGET = ((4096, "low"), (16384, "medium"))
ADAPTIVE_EFFORT = "medium"

# The chat field a capability check names → the Messages field the caller wrote, so a refusal
# the router phrases in chat terms can name what the caller sent.
CHAT_TO_MESSAGES_FIELD = {
    "tools": "tools", "tool_choice": "tool_choice", "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
    "response_format": "output_config.format", "image_url": "image", "reasoning_effort": "thinking",
    "stop": "stop_sequences", "max_completion_tokens": "max_tokens",
    "service_tier": "service_tier", "temperature": "temperature", "top_p": "top_p",
}


def _effort_for_budget(budget: int) -> str:
    return next((effort for bound, effort in _EFFORT_BY_BUDGET if budget < bound), "high")


def _text_part(block: dict[str, Any]) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": block["text"]}
    if "cache_control" in block:
        part["cache_control"] = block["cache_control"]
    return part


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    source = block["source"]
    url = (f"data:{source['media_type']};base64,{source['data']}" if source["type"] == "base64"
           else source["url"])
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    if "cache_control" in block:
        part["cache_control"] = block["cache_control"]
    return part


def _plain(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One uncached text part is sent as a string (what every backend reads most simply)."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        return parts[0]["text"]
    return parts


class _Translation:
    def __init__(self) -> None:
        self.claude_only: list[str] = []

    def only_claude(self, what: str) -> None:
        if what not in self.claude_only:
            self.claude_only.append(what)

    # -- content -------------------------------------------------------------------------
    def _document_parts(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        source = block["source"]
        if (block.get("citations") or {}).get("enabled"):
            self.only_claude("document citations")
        if source["type"] in ("base64", "url"):  # a PDF
            self.only_claude("PDF documents")
            return []
        if source["type"] == "text":
            parts = [{"type": "text", "text": source["data"]}]
        elif isinstance(source["content"], str):
            parts = [{"type": "text", "text": source["content"]}]
        else:
            parts = [self._part(inner) for inner in source["content"]]
        title = block.get("title")
        if title:
            parts.insert(0, {"type": "text", "text": title})
        if "cache_control" in block:
            parts[-1]["cache_control"] = block["cache_control"]
        return parts

    def _part(self, block: dict[str, Any]) -> dict[str, Any]:
        return _image_part(block) if block["type"] == "image" else _text_part(block)

    def _parts(self, blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for block in blocks:
            if block["type"] == "document":
                parts += self._document_parts(block)
            else:
                parts.append(self._part(block))
        return parts

    def _tool_message(self, block: dict[str, Any], images: list[dict[str, Any]]) -> dict[str, Any]:
        content = block.get("content")
        if content is None:
            texts: list[dict[str, Any]] = []
        elif isinstance(content, str):
            texts = [{"type": "text", "text": content}]
        else:
            texts = []
            for part in self._parts(content):
                (images if part["type"] == "image_url" else texts).append(part)
        if block.get("is_error"):
            texts = ([{**texts[0], "text": "Error: " + texts[0]["text"]}, *texts[1:]] if texts
                     else [{"type": "text", "text": "Error"}])
        if "cache_control" in block and texts:
            texts[-1] = {**texts[-1], "cache_control": block["cache_control"]}
        text: str | list[dict[str, Any]] = _plain(texts) if texts else ""
        return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}

    def _user(self, content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(content, str):
            return [{"role": "user", "content": content}]
        tools: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        rest = []
        for block in content:
            if block["type"] == "tool_result":
                tools.append(self._tool_message(block, images))
            else:
                rest.append(block)
        parts = images + self._parts(rest)
        if parts or not tools:
            tools.append({"role": "user", "content": _plain(parts) if parts else ""})
        return tools

    @staticmethod
    def _assistant(content: str | list[dict[str, Any]]) -> dict[str, Any]:
        if isinstance(content, str):
            return {"role": "assistant", "content": content}
        texts = [_text_part(b) for b in content if b["type"] == "text"]
        thinking = [b for b in content if b["type"] in ("thinking", "redacted_thinking")]
        calls = [{"id": b["id"], "type": "function",
                  "function": {"name": b["name"], "arguments": json.dumps(b["input"], ensure_ascii=False)}}
                 for b in content if b["type"] == "tool_use"]
        message: dict[str, Any] = {"role": "assistant"}
        if any("cache_control" in part for part in texts):
            message["content"] = texts
        elif texts or not calls:  # a turn of thinking alone still says something: ""
            message["content"] = "".join(part["text"] for part in texts)
        if calls:
            message["tool_calls"] = calls
        if thinking:
            message["reasoning_content"] = "".join(b.get("thinking", "") for b in thinking)
            message["thinking_blocks"] = thinking
        return message

    def messages(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        system = request.get("system")
        if system is not None:
            out.append({"role": "system", "content": system if isinstance(system, str) else self._parts(system)})
        for message in request["messages"]:
            role, content = message["role"], message["content"]
            if role == "user":
                out += self._user(content)
            elif role == "assistant":
                out.append(self._assistant(content))
            else:
                out.append({"role": "system", "content": content if isinstance(content, str) else self._parts(content)})
        if request["messages"][-1]["role"] == "assistant":
            self.only_claude("a last turn from the assistant (prefill)")
        return out

    # -- parameters ----------------------------------------------------------------------
    def tools(self, request: dict[str, Any], body: dict[str, Any]) -> None:
        tools = request.get("tools") or []
        if len(tools) > OPENAI_MAX_TOOLS:
            self.only_claude(f"more than {OPENAI_MAX_TOOLS} tools")
        if any(len(tool["name"]) > OPENAI_MAX_NAME for tool in tools):
            self.only_claude(f"tool names over {OPENAI_MAX_NAME} characters")
        if tools:
            body["tools"] = []
            for tool in tools[:OPENAI_MAX_TOOLS]:
                function: dict[str, Any] = {"name": tool["name"][:OPENAI_MAX_NAME], "parameters": tool["input_schema"]}
                if "description" in tool:
                    function["description"] = tool["description"]
                if tool.get("strict") is not None:
                    function["strict"] = tool["strict"]
                body["tools"].append({"type": "function", "function": function})
        choice = request.get("tool_choice")
        if choice is None or not tools:
            return
        kind = choice["type"]
        if kind == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": choice["name"][:OPENAI_MAX_NAME]}}
        else:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        if choice.get("disable_parallel_tool_use"):
            body["parallel_tool_calls"] = False

    @staticmethod
    def reasoning(request: dict[str, Any], body: dict[str, Any]) -> None:
        thinking = request.get("thinking") or {}
        if thinking.get("type") == "disabled":
            return
        effort = (request.get("output_config") or {}).get("effort")
        if effort is None and thinking.get("type") == "enabled":
            effort = _effort_for_budget(thinking["budget_tokens"])
        elif effort is None and thinking.get("type") == "adaptive":
            effort = ADAPTIVE_EFFORT
        if effort is not None:
            body["reasoning_effort"] = effort

    def parameters(self, request: dict[str, Any], body: dict[str, Any]) -> None:
        if request.get("max_tokens") == 0:
            self.only_claude("max_tokens: 0")
        elif request.get("max_tokens") is not None:  # a count_tokens body has none
            body["max_completion_tokens"] = request["max_tokens"]
        stop = request.get("stop_sequences")
        if stop and len(stop) > OPENAI_MAX_STOP:
            self.only_claude(f"more than {OPENAI_MAX_STOP} stop_sequences")
        elif stop:
            body["stop"] = list(stop)
        for name in ("temperature", "top_p"):
            if request.get(name) is not None:
                body[name] = request[name]
        if request.get("service_tier") == "standard_only":
            body["service_tier"] = "default"
        self.tools(request, body)
        self.reasoning(request, body)
        output_format = (request.get("output_config") or {}).get("format")
        if output_format is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": output_format["schema"]}}
        for name in ("top_k", "inference_geo", "diagnostics"):
            if request.get(name) is not None:
                self.only_claude(name)
        if request.get("speed") == "fast":
            self.only_claude("speed: fast")


def to_chat(request: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The Chat Completions body for ``request`` (a Messages body the schema accepted; NeuroAPI's
    ``mode`` is ignored), and what in it only Claude honours (empty: every backend can serve it
    as asked). ``stream_options`` is included: read it with ``parse_chat_request``."""
    translation = _Translation()
    body: dict[str, Any] = {"model": request["model"], "messages": translation.messages(request)}
    stream = bool(request.get("stream"))
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    translation.parameters(request, body)
    return body, translation.claude_only
