"""The wire schema of OpenAI's Chat Completions request.

Strict on purpose: a parameter NeuroAPI would not honour is a 400 that names it, never silently
dropped, and a value of the wrong JSON type is a 400 too (no coercion: ``"10"`` is not a
number, ``1`` is not ``true``; an integer where a number is expected is fine). Sizes and
numbers are bounded so nothing absurd is forwarded upstream. ``mode`` is our one addition to
OpenAI's request."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from serve_app.endpoints.parsing import Strict, parse_body

# Bounds: generous for any real call, small enough that nothing absurd reaches an upstream.
MAX_TOKENS_CAP = 1_000_000
MAX_MESSAGES = 10_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 1_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, str]]
    name: str | None = Field(default=None, max_length=256)

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ValueError(f"only text content parts are supported, not '{kind}'")
                if not isinstance(part.get("text"), str) or set(part) != {"type", "text"}:
                    raise ValueError("a text part is exactly {\"type\": \"text\", \"text\": \"...\"}")
        return content


class StreamOptions(Strict):
    include_usage: bool = False


class ChatCompletionRequest(Strict):
    model: str = Field(min_length=1, max_length=256)
    mode: str | None = Field(default=None, min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: (Annotated[str, Field(max_length=MAX_STOP_LENGTH)]
           | list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]] | None) = None
    n: int | None = Field(default=None, ge=1, le=1)  # Literal[1] would take true (true == 1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    user: str | None = Field(default=None, max_length=256)
    logprobs: bool | None = None  # false only: checked below (Literal[False] would take 0)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return stop

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, logprobs: bool | None) -> bool | None:
        if logprobs:
            raise ValueError("logprobs are not supported")
        return logprobs

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("send max_tokens or max_completion_tokens, not both")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def upstream_body(self) -> dict[str, Any]:
        """The request as every adapter reads it: only what the caller set, minus our fields."""
        return self.model_dump(exclude_none=True, exclude={"mode", "n", "logprobs", "stream_options"})


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    return parse_body(ChatCompletionRequest, raw)
