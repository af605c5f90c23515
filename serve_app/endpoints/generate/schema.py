"""``POST /v1/generate``: NeuroAPI's own request shape, the one the Security & data page names: a
``prompt``, its ``message_history`` and a ``mode`` (or a model), answered with the text alone."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from serve_app.endpoints.chat.schema import MAX_MESSAGES, MAX_STOP_LENGTH, MAX_STOP_SEQUENCES, MAX_TOKENS_CAP
from serve_app.endpoints.parsing import Strict, parse_body


class HistoryTurn(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerateRequest(Strict):
    prompt: str = Field(description="The new user turn.")
    message_history: list[HistoryTurn] = Field(
        default_factory=list, max_length=MAX_MESSAGES,
        description="Earlier turns, oldest first. Like the prompt, never kept after the answer is delivered.")
    mode: str | None = Field(default=None, min_length=1, max_length=256,
                             description="A mode (fast, balanced, smart, cheap, private, ...): which models may serve.")
    model: str | None = Field(default=None, min_length=1, max_length=256,
                              description="A model (or a mode's name) instead of, or pinned within, `mode`.")
    system: str | None = Field(default=None, description="Instructions placed before the history.")
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]] | None = Field(
        default=None, max_length=MAX_STOP_SEQUENCES)

    @model_validator(mode="after")
    def _mode_or_model(self) -> GenerateRequest:
        if self.mode is None and self.model is None:
            raise ValueError("send 'mode' (or 'model')")
        return self

    def chat_body(self) -> dict[str, Any]:
        """The OpenAI chat body every backend takes."""
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        messages += [turn.model_dump() for turn in self.message_history]
        messages.append({"role": "user", "content": self.prompt})
        body: dict[str, Any] = {"model": self.model or self.mode, "messages": messages}
        for name in ("max_tokens", "temperature", "top_p", "stop"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body


def parse_generate_request(raw: bytes) -> GenerateRequest:
    return parse_body(GenerateRequest, raw)


# The answer's shape, for the OpenAPI document (the service builds it).

class GenerateUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_units: float = Field(description="The call's price, exact decimal.")


class Generation(BaseModel):
    id: str
    mode: str | None = Field(description="The mode that routed the call; null when a model was named.")
    model: str = Field(description="The model that answered.")
    text: str
    finish_reason: str = Field(description="stop, length or content_filter.")
    usage: GenerateUsage


GENERATE_STREAM = ("`event: delta` events with `{\"text\"}` as the model writes, then one `event: done` whose data is "
                   "the answer without its text (`id`, `mode`, `model`, `finish_reason`, `usage` with `cost_units`); "
                   "a failure after the first byte is an `event: error` with `{\"error\": {...}}`.")
