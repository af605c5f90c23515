"""``POST /v1/chat/completions`` as plain Python: the chat body parsed, then the shared call path
(``serve_app.endpoints.model_calls``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from actors.keys.store import VerifiedKey
from actors.metering.call_meter import CallMeter
from serve_app.endpoints.chat.schema import parse_chat_request
from serve_app.endpoints.model_calls import ModelAnswer, ModelCalls, ModelRequest


def chat_request(raw: bytes) -> ModelRequest:
    chat = parse_chat_request(raw)
    return ModelRequest(chat.model, chat.mode, chat.stream, chat.upstream_body(), chat.wants_usage_in_stream)


class ChatService:
    def __init__(self, calls: ModelCalls):
        self._calls = calls

    async def answer(self, meter: CallMeter, authenticate: Callable[[], Awaitable[VerifiedKey]],
                     read_body: Callable[[], Awaitable[bytes]]) -> ModelAnswer:
        return await self._calls.answer(meter, authenticate, read_body, chat_request)
