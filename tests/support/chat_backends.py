"""A fallback order over two real providers and the backends that call them directly (provider
clients on the fake upstreams, no Ray), for the chat fallback and relay tests."""

from __future__ import annotations

from actors.routing.table import Backend
from core.backend import UpstreamCall
from tests.support.provider_clients import client_for

ORDER = [Backend("deepseek-chat", "deepseek", "deepseek"), Backend("claude-haiku-4-5", "anthropic", "anthropic")]
CALL = UpstreamCall("req-1", "", {"messages": [{"role": "user", "content": "hi there"}]}, False)


class DirectBackends:
    def __init__(self, upstreams):
        self._clients = {p: client_for(upstreams, p) for p in ("deepseek", "anthropic")}

    async def complete(self, backend, call):
        return await self._clients[backend.provider].complete(call)

    def stream(self, backend, call):
        return self._clients[backend.provider].stream(call)
