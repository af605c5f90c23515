"""The wire schema of OpenAI's Chat Completions request: the whole API a current official SDK
can send, each field honoured or refused by name.

Strict on purpose: a parameter NeuroAPI would not honour is a 400 that names it, never silently
dropped, and a value of the wrong JSON type is a 400 too (no coercion: ``"10"`` is not a
number, ``1`` is not ``true``; an integer where a number is expected is fine). Sizes and
numbers are bounded so nothing absurd is forwarded upstream. NeuroAPI's additions: ``mode``;
``cache_control`` on content parts (Anthropic's prompt caching); an assistant message's
``reasoning_content`` and ``thinking_blocks`` (our own answer fields, sent back by callers so a
tool loop with Anthropic thinking keeps its signed blocks). Whether the chosen model can honour
what the request uses is the router's question (``core.capabilities``), not the schema's."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from serve_app.endpoints.parsing import Strict, parse_body

# Bounds: generous for any real call, small enough that nothing absurd reaches an upstream.
MAX_TOKENS_CAP = 1_000_000
MAX_MESSAGES = 10_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 1_000
MAX_TOOLS = 128  # OpenAI's own limit
MAX_TOOL_CALLS = 128
MAX_PARTS = 1_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for tool and schema names
ShortText = Annotated[str, Field(max_length=256)]

_NO_STORE = ("'store': true is not supported: NeuroAPI never keeps prompts or completions "
             "(see the Security & data page), so completions cannot be stored")


class CacheControl(Strict):
    """Anthropic's prompt-cache breakpoint; passed to Anthropic models, meaningless elsewhere."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


def _public_host(url: str) -> bool:
    """Whether an image URL's host could be a public server. The provider fetches the image from
    its own network, so an address it would reach inside is refused; a name is not resolved here
    (NeuroAPI makes no request for a caller's URL, DNS included)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host or host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return False
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        pass
    # A name: a public one has a dot and a top-level label with a letter (a bare "metadata" or
    # "intranet" is not public; "0x7f.0.0.1" and "0177.1" are addresses in disguise).
    top = host.rsplit(".", 1)[-1]
    return "." in host and any(c.isalpha() for c in top) and not top.startswith("0x")


class ImageUrl(Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _https_or_data(cls, url: str) -> str:
        # The provider fetches an https image itself; NeuroAPI never requests a caller's address.
        if url.startswith("data:"):
            if not url.startswith("data:image/") or ";base64," not in url[:100]:
                raise ValueError("a data: image URL must be base64 (data:image/png;base64,...)")
            return url
        if not url.startswith("https://"):
            raise ValueError("an image must be an https:// URL or a data:image/...;base64 URL")
        if not _public_host(url):
            raise ValueError("an image URL must name a public host (not localhost or a private address)")
        return url


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageUrl
    cache_control: CacheControl | None = None


class RefusalPart(Strict):
    type: Literal["refusal"]
    refusal: str


TextParts = Annotated[list[TextPart], Field(min_length=1, max_length=MAX_PARTS)]
UserParts = Annotated[list[Annotated[TextPart | ImagePart, Field(discriminator="type")]],
                      Field(min_length=1, max_length=MAX_PARTS)]
AssistantParts = Annotated[list[Annotated[TextPart | RefusalPart, Field(discriminator="type")]],
                           Field(min_length=1, max_length=MAX_PARTS)]


class SystemMessage(Strict):
    role: Literal["system", "developer"]
    content: str | TextParts
    name: ShortText | None = None


class UserMessage(Strict):
    role: Literal["user"]
    content: str | UserParts
    name: ShortText | None = None


class FunctionCall(Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str  # JSON text, as the model wrote it


class ToolCall(Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: FunctionCall


class ThinkingBlock(Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: str | AssistantParts | None = None
    name: ShortText | None = None
    refusal: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1, max_length=MAX_TOOL_CALLS)] | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[Annotated[ThinkingBlock | RedactedThinkingBlock, Field(discriminator="type")]] | None = None

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls and self.refusal is None:
            raise ValueError("an assistant message needs content, tool_calls or a refusal")
        return self


class ToolMessage(Strict):
    role: Literal["tool"]
    content: str | TextParts
    tool_call_id: str = Field(min_length=1, max_length=256)


def _role(message: Any) -> str | None:
    """Which message model validates ``message`` ("developer" is OpenAI's newer "system")."""
    role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
    return "system" if role == "developer" else role


Message = Annotated[
    Annotated[SystemMessage, Tag("system")] | Annotated[UserMessage, Tag("user")]
    | Annotated[AssistantMessage, Tag("assistant")] | Annotated[ToolMessage, Tag("tool")],
    Discriminator(_role, custom_error_type="invalid_role", custom_error_message=(
        "role must be system, developer, user, assistant or tool (the deprecated 'function' role: "
        "send tool results as 'tool' messages)")),
]


class FunctionDefinition(Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(default=None, max_length=100_000)
    parameters: dict[str, Any] | None = None  # a JSON schema, passed on as sent
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]  # OpenAI's "custom" tools (free-text input) have no equivalent elsewhere
    function: FunctionDefinition


class NamedFunction(Strict):
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is required with type json_schema, and only with it")
        return self


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # NeuroAPI adds no obfuscation field of its own


class ChatCompletionRequest(Strict):
    model: str = Field(min_length=1, max_length=256)
    mode: str | None = Field(default=None, min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: (Annotated[str, Field(max_length=MAX_STOP_LENGTH)]
           | list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]] | None) = None
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = Field(default=None, max_length=1024)
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(default=None, max_length=16)
    prompt_cache_key: str | None = Field(default=None, max_length=1024)
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    modalities: list[Literal["text"]] | None = None  # audio output is not carried
    store: bool | None = None  # false only: NeuroAPI keeps no completion

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return stop

    @field_validator("store")
    @classmethod
    def _never_stored(cls, store: bool | None) -> bool | None:
        if store:
            raise ValueError(_NO_STORE)
        return store

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("send max_tokens or max_completion_tokens, not both")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tools is None and (self.tool_choice not in (None, "none") or self.parallel_tool_calls is not None):
            raise ValueError("tool_choice and parallel_tool_calls need tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            named = self.tool_choice.function.name
            if named not in {tool.function.name for tool in self.tools or ()}:
                raise ValueError(f"tool_choice names '{named}', which is not one of the tools")
        return self

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def upstream_body(self) -> dict[str, Any]:
        """The request as every adapter reads it: what the caller set, minus our own fields
        (``store`` too: a provider that keeps completions gets ``store: false`` from its adapter)."""
        return self.model_dump(exclude_none=True, by_alias=True,
                               exclude={"mode", "stream_options", "store"})


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    return parse_body(ChatCompletionRequest, raw)


# The answer's shape, for the OpenAPI document only (answers are relayed as the backend's JSON,
# translated where needed; these models validate nothing).

class PromptTokensDetails(BaseModel):
    cached_tokens: int | None = Field(default=None, description="Prompt tokens read from the provider's cache.")
    cache_write_tokens: int | None = Field(default=None, description="Prompt tokens written to Anthropic's cache.")


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int | None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None
    cost_units: float = Field(description="NeuroAPI: the call's exact price in cost_units (1 cost_unit = "
                                          "US$0.000001), a JSON number written from exact decimal text.")


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = Field(default=None, description="NeuroAPI: the model's reasoning text, "
                                                                    "where the backend returns one.")
    thinking_blocks: list[ThinkingBlock | RedactedThinkingBlock] | None = Field(
        default=None, description="NeuroAPI: Anthropic's signed thinking blocks; send them back on the assistant "
                                  "message of the next turn of a tool loop.")


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    """OpenAI's ``chat.completion``, plus ``usage.cost_units``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    service_tier: str | None = None


class ChunkFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChunkFunction | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChunkToolCall] | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[ThinkingBlock | RedactedThinkingBlock] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    """One streamed ``data:`` event: OpenAI's ``chat.completion.chunk``."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = Field(default=None, description="Only on the last chunk (empty choices), "
                                                                    "with stream_options.include_usage.")


CHAT_STREAM = ("`data: {chat.completion.chunk}` events as the model writes (tool calls as argument fragments); "
               "with `stream_options.include_usage`, a last chunk with empty `choices` and `usage` (cost_units "
               "included); then `data: [DONE]`. A failure after the stream started arrives as one "
               "`data: {\"error\": {...}}` event in the error shape, then the stream ends.")
