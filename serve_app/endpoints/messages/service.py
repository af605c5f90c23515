"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` as plain Python.

The caller's Anthropic body is parsed (``schema``) into both of its forms: as it came, for a
Claude model, which gets it unchanged and answers as Anthropic does; and as an OpenAI chat body
(``to_chat``) for every other backend, whose answer is turned back into Anthropic's message or
events (``from_chat``). Routing, scopes, fallback and metering are the shared call path's
(``serve_app.endpoints.model_calls``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from actors.keys.store import VerifiedKey
from actors.metering.call_meter import CallMeter
from core.errors import GatewayError, upstream_error
from core.money import priced_json
from serve_app.endpoints.chat.fallback import Framing
from serve_app.endpoints.messages.errors import anthropic_error_event
from serve_app.endpoints.messages.from_chat import ChatToAnthropicStream, message_from_chat
from serve_app.endpoints.messages.schema import CountTokensRequest, MessagesRequest, parse_messages_request
from serve_app.endpoints.messages.to_chat import CHAT_TO_MESSAGES_FIELD
from serve_app.endpoints.model_calls import ModelAnswer, ModelCalls, ModelRequest, Reshape

# A native stream's last event is Anthropic's own message_stop: nothing follows it.
ANTHROPIC_FRAMING = Framing(b"", anthropic_error_event)


def messages_request(raw: bytes, betas: tuple[str, ...]) -> ModelRequest:
    parsed = parse_messages_request(raw)
    return _model_request(parsed, parsed.native_body(), betas)


def count_request(raw: bytes, betas: tuple[str, ...]) -> ModelRequest:
    """A count_tokens body: a message request without ``max_tokens``."""
    parsed = parse_messages_request(raw, CountTokensRequest)
    return _model_request(parsed, parsed.native_body(), betas)


def _model_request(parsed: MessagesRequest, native: dict, betas: tuple[str, ...]) -> ModelRequest:
    chat_body, claude_only = parsed.chat_body()
    native_only = None
    if claude_only:
        native_only = ", ".join(f"'{field}'" for field in claude_only) + " only works with Claude models"
    return ModelRequest(parsed.model, parsed.mode, parsed.stream, chat_body, wants_usage_in_stream=True,
                        native=native, native_only=native_only, native_betas=betas)


def _reshape(request: ModelRequest, native: bool, mode: str | None) -> Reshape | None:
    return None if native else ChatToAnthropicStream(request.model).feed


@dataclass(frozen=True)
class MessagesAnswer:
    answer: ModelAnswer
    body: bytes = b""  # Anthropic's message object, priced (a non-streamed answer)


def in_messages_terms(error: GatewayError) -> GatewayError:
    """A capability refusal names the chat field a backend lacks ('reasoning_effort'); the caller
    wrote the Messages field ('thinking')."""
    if error.code != "unsupported_parameter":
        return error
    message = error.message
    for chat_field, field in CHAT_TO_MESSAGES_FIELD.items():
        message = message.replace(f"'{chat_field}'", f"'{field}'")
    return GatewayError(error.status, message, error.type, error.code,
                        CHAT_TO_MESSAGES_FIELD.get(error.param or "", error.param), headers=error.headers)


class MessagesService:
    def __init__(self, calls: ModelCalls):
        self._calls = calls

    async def answer(self, meter: CallMeter, authenticate: Callable[[], Awaitable[VerifiedKey]],
                     read_body: Callable[[], Awaitable[bytes]], betas: tuple[str, ...]) -> MessagesAnswer:
        try:
            answer = await self._calls.answer(meter, authenticate, read_body,
                                              lambda raw: messages_request(raw, betas),
                                              reshape=_reshape, framing=ANTHROPIC_FRAMING)
        except GatewayError as error:
            raise in_messages_terms(error) from None
        if answer.events is not None or answer.native:
            return MessagesAnswer(answer, answer.body)
        try:
            message = message_from_chat(json.loads(answer.body), answer.outcome.backend.model)
        except ValueError:  # e.g. a tool call whose arguments are not JSON: no tool_use block can carry it
            raise upstream_error("The model's answer cannot be expressed as an Anthropic message.") from None
        return MessagesAnswer(answer, priced_json(message, answer.cost_units))

    async def count_tokens(self, meter: CallMeter, authenticate: Callable[[], Awaitable[VerifiedKey]],
                           read_body: Callable[[], Awaitable[bytes]], betas: tuple[str, ...]) -> tuple[int, bool]:
        return await self._calls.count_tokens(meter, authenticate, read_body,
                                              lambda raw: count_request(raw, betas))
