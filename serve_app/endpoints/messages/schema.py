"""The wire schema of Anthropic's Messages request (``POST /v1/messages``): every parameter the
official SDK can send, each accepted or refused by name, plus NeuroAPI's ``mode``.

Strict like the chat schema (``serve_app.endpoints.parsing``): an unknown field or a value of the
wrong JSON type is a 400 naming it (Anthropic refuses unknown fields too).

Accepted and carried to every backend (``to_chat`` says how): ``model``, ``max_tokens``,
``messages`` (``user``, ``assistant`` and ``system`` turns; ``text``, ``image`` (base64 or an
https URL on a public host), ``document`` (PDF, plain text or content), ``tool_use``,
``tool_result``, ``thinking``, ``redacted_thinking`` blocks), ``system``, custom ``tools``,
``tool_choice``, ``stop_sequences``, ``temperature``, ``top_p``, ``top_k``, ``metadata.user_id``,
``thinking``, ``stream``, ``service_tier``, ``output_config`` (``effort``, a ``json_schema``
``format``), top-level ``cache_control``, ``diagnostics``, ``inference_geo``, ``speed``. Some of
them only Claude honours: ``to_chat`` lists those, and the router decides.

Refused by name:
- ``container``: code-execution containers keep the caller's files at the provider, which
  NeuroAPI's no-retention promise forbids (and their runtime is not priced here);
- ``user_profile_id``, ``workspace_id``: they name objects of the provider organisation, which is
  NeuroAPI's, not the caller's;
- server tools (``web_search_*``, ``web_fetch_*``, ``code_execution_*``, ``bash_*``,
  ``text_editor_*``, ``memory_*``, computer and browser toolsets): they run at the provider, are
  billed per use outside NeuroAPI's token prices, and most keep state there; a custom tool's
  ``defer_loading``, ``allowed_callers`` and ``input_examples`` belong to those server features;
- ``file`` image/document sources (the Files API stores the caller's files at the provider),
  ``search_result`` and server-tool result blocks, and a thinking type other than enabled,
  disabled and adaptive."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, PrivateAttr, Tag, model_validator

from serve_app.endpoints.chat.schema import MAX_MESSAGES, MAX_STOP_LENGTH, MAX_TOKENS_CAP, CacheControl, _public_host
from serve_app.endpoints.messages.to_chat import to_chat
from serve_app.endpoints.parsing import Strict, parse_body

# Bounds: generous for any real call (above what OpenAI's side allows where Claude allows more:
# to_chat lists what only Claude can then take).
MAX_STOP_SEQUENCES = 1_000
MAX_TOOLS = 1_000
MAX_BLOCKS = 10_000
TOOL_NAME = r"^[a-zA-Z0-9_-]{1,128}$"  # Anthropic's rule for a tool's name
MIN_THINKING_BUDGET = 1024  # Anthropic's floor for budget_tokens
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _type_of(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


def _one_of(*models: type, field: str = "type", why: str = "") -> Any:
    """A union told apart by ``field``, whose error names what is accepted and never echoes the
    caller's value (pydantic's own message quotes it)."""
    tags = [model.model_fields[field].annotation.__args__[0] for model in models]
    allowed = ", ".join(tags[:-1]) + f" or {tags[-1]}" if len(tags) > 1 else tags[0]
    union = Annotated[models[0], Tag(tags[0])]
    for model, tag in zip(models[1:], tags[1:]):
        union = union | Annotated[model, Tag(tag)]
    getter = _type_of if field == "type" else (lambda v: v.get(field) if isinstance(v, dict) else getattr(v, field, None))
    return Annotated[union, Discriminator(getter, custom_error_type=f"invalid_{field}",
                                          custom_error_message=f"{field} must be {allowed}{why}")]


_NOT_BLOCKS = (" (server tool blocks, search results and Files API sources are not supported by NeuroAPI: they "
               "run or keep data at the provider)")


def _public_https(url: str) -> str:
    """The provider fetches a URL source itself; NeuroAPI never requests a caller's address, and
    refuses one the provider would reach inside a network (as the chat schema does)."""
    if not url.startswith("https://"):
        raise ValueError("a url source must be an https:// URL")
    if not _public_host(url):
        raise ValueError("a url source must name a public host (not localhost or a private address)")
    return url


class TextBlock(Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    # Citations of an earlier answer, echoed back: Claude reads them; elsewhere they are dropped.
    citations: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_BLOCKS)


class ImageSource(Strict):
    """``{type: base64, media_type, data}`` or ``{type: url, url}`` (one model, so an error
    names ``source`` rather than a union member)."""

    type: Literal["base64", "url"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"] | None = None
    data: str | None = Field(default=None, min_length=1)
    url: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> ImageSource:
        if self.type == "base64" and (self.media_type is None or self.data is None or self.url is not None):
            raise ValueError("a base64 image source has media_type and data (and no url)")
        if self.type == "url":
            if self.url is None or self.media_type is not None or self.data is not None:
                raise ValueError("a url image source has only a url")
            _public_https(self.url)
        return self


class ImageBlock(Strict):
    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl | None = None


class DocumentSource(Strict):
    """A PDF (``base64`` with media_type application/pdf, or ``url``), plain text (``text``
    with media_type text/plain and data) or ``content`` (a string or text/image blocks)."""

    type: Literal["base64", "url", "text", "content"]
    media_type: Literal["application/pdf", "text/plain"] | None = None
    data: str | None = None
    url: str | None = Field(default=None, min_length=1)
    content: str | Annotated[list[_one_of(TextBlock, ImageBlock)],
                             Field(min_length=1, max_length=MAX_BLOCKS)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> DocumentSource:
        fields = {name for name in ("media_type", "data", "url", "content") if getattr(self, name) is not None}
        expected = {"base64": ({"media_type", "data"}, "application/pdf"), "text": ({"media_type", "data"}, "text/plain"),
                    "url": ({"url"}, None), "content": ({"content"}, None)}[self.type]
        if fields != expected[0] or self.media_type != expected[1]:
            raise ValueError("a document source is base64 (media_type application/pdf, data), text "
                             "(media_type text/plain, data), url (url) or content (content)")
        if self.type == "url":
            _public_https(self.url or "")
        return self


class CitationsConfig(Strict):
    enabled: bool | None = None


class DocumentBlock(Strict):
    type: Literal["document"]
    source: DocumentSource
    title: str | None = Field(default=None, max_length=500)
    context: str | None = None
    citations: CitationsConfig | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(pattern=TOOL_NAME)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


ToolResultContent = Annotated[list[_one_of(TextBlock, ImageBlock, DocumentBlock, why=_NOT_BLOCKS)],
                              Field(max_length=MAX_BLOCKS)]


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | ToolResultContent | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str


# Anthropic refuses an empty turn, except a last assistant one (an empty prefill).
UserBlocks = Annotated[list[_one_of(TextBlock, ImageBlock, DocumentBlock, ToolResultBlock, why=_NOT_BLOCKS)],
                       Field(min_length=1, max_length=MAX_BLOCKS)]
AssistantBlocks = Annotated[
    list[_one_of(TextBlock, ToolUseBlock, ThinkingBlock, RedactedThinkingBlock, why=_NOT_BLOCKS)],
    Field(max_length=MAX_BLOCKS)]
SystemBlocks = Annotated[list[TextBlock], Field(min_length=1, max_length=MAX_BLOCKS)]


class UserMessage(Strict):
    role: Literal["user"]
    content: str | UserBlocks


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: str | AssistantBlocks


class SystemMessage(Strict):
    role: Literal["system"]
    content: str | SystemBlocks


Message = _one_of(UserMessage, AssistantMessage, SystemMessage, field="role")


class Tool(Strict):
    """A custom (client) tool; a server tool is refused by its type."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = Field(default=None, max_length=100_000)
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    strict: bool | None = None
    eager_input_streaming: bool | None = None  # how Claude streams the input; nothing elsewhere

    @model_validator(mode="before")
    @classmethod
    def _not_a_server_tool(cls, tool: Any) -> Any:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind != "custom":
            raise ValueError(f"the server tool type '{kind[:64]}' is not supported by NeuroAPI (server tools run "
                             "and bill at the provider, outside NeuroAPI's prices and no-retention rules); "
                             "send custom tools (name, description, input_schema)")
        return tool


class ToolChoice(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, pattern=TOOL_NAME)
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name_with_tool(self) -> ToolChoice:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("'name' is required with type tool, and only with it")
        if self.type == "none" and self.disable_parallel_tool_use is not None:
            raise ValueError("disable_parallel_tool_use does not go with type none")
        return self


class Metadata(Strict):
    user_id: str | None = Field(default=None, max_length=256)


class ThinkingConfig(Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=MIN_THINKING_BUDGET, le=MAX_TOKENS_CAP)
    display: Literal["summarized", "omitted"] | None = None

    @model_validator(mode="after")
    def _budget_when_enabled(self) -> ThinkingConfig:
        if (self.type == "enabled") != (self.budget_tokens is not None):
            raise ValueError("'budget_tokens' is required with type enabled, and only with it")
        if self.type == "disabled" and self.display is not None:
            raise ValueError("'display' does not go with type disabled")
        return self


class JsonOutputFormat(Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Strict):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JsonOutputFormat | None = None


class Diagnostics(Strict):
    previous_message_id: str | None = Field(default=None, max_length=256)


class MessagesRequest(Strict):
    model: str = Field(min_length=1, max_length=256)
    mode: str | None = Field(default=None, min_length=1, max_length=256, description=(
        "NeuroAPI: a mode's name (or send it as model); the mode picks the backend."))
    # 0 only warms Claude's prompt cache (no answer); to_chat lists it as Claude-only.
    max_tokens: int = Field(ge=0, le=MAX_TOKENS_CAP)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | SystemBlocks | None = None
    stream: bool = False
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    stop_sequences: list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]] | None = Field(
        default=None, max_length=MAX_STOP_SEQUENCES)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    metadata: Metadata | None = None
    thinking: ThinkingConfig | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = None
    diagnostics: Diagnostics | None = None
    inference_geo: str | None = Field(default=None, min_length=1, max_length=64)
    speed: Literal["standard", "fast"] | None = None

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> MessagesRequest:
        names = [tool.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        choice = self.tool_choice
        if choice is not None and choice.type in ("any", "tool") and not names:
            raise ValueError(f"tool_choice {choice.type} needs tools")
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice names '{choice.name}', which is not one of the tools")
        thinking = self.thinking
        if (thinking is not None and thinking.budget_tokens is not None and self.max_tokens is not None
                and thinking.budget_tokens >= self.max_tokens):
            raise ValueError("max_tokens must be greater than thinking.budget_tokens")
        return self

    def native_body(self) -> dict[str, Any]:
        """The caller's JSON object as it was sent (parsed, never re-serialised through the
        models), less NeuroAPI's ``mode``: what a Claude backend gets, field for field."""
        return {name: value for name, value in self._raw.items() if name != "mode"}

    def chat_body(self) -> tuple[dict[str, Any], list[str]]:
        """The Chat Completions request every other backend takes, and what only Claude honours."""
        return to_chat(self.native_body())


class CountTokensRequest(MessagesRequest):
    """``/v1/messages/count_tokens``: a message request whose answer is not asked for."""

    max_tokens: None = Field(default=None, description="Not taken: only the prompt is counted.")
    stream: Literal[False] = False


def parse_messages_request(raw: bytes, model: type[MessagesRequest] = MessagesRequest) -> MessagesRequest:
    request = parse_body(model, raw)
    # Valid JSON by now; kept as the caller's own dict for the Claude pass-through.
    request._raw = json.loads(raw)
    return request


# The answer's shape, for the OpenAPI document only (a Claude model's answer is relayed as
# Anthropic sent it, priced; others are translated by ``from_chat``).

class MessageUsage(BaseModel):
    input_tokens: int = Field(description="Prompt tokens not read from or written to the prompt cache.")
    output_tokens: int
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cost_units: float = Field(description="NeuroAPI's price of the call, exact decimal.")


class AnthropicMessage(BaseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str = Field(description="The model that answered.")
    content: list[dict[str, Any]] = Field(description="text, thinking, redacted_thinking and tool_use blocks.")
    stop_reason: str | None = Field(description="end_turn, max_tokens, stop_sequence, tool_use, pause_turn, refusal.")
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(BaseModel):
    input_tokens: int


MESSAGES_STREAM = ("Anthropic's events, each with its `event:` line: `message_start`, `ping`, `content_block_start` / "
                   "`content_block_delta` (`text_delta`, `input_json_delta`, `thinking_delta`, `signature_delta`) / "
                   "`content_block_stop`, `message_delta` (stop reason; usage with `cost_units`), `message_stop`; "
                   "a failure after the first byte is an `error` event.")
