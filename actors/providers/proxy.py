"""A provider proxy: one deployment per configured provider, holding its credential and its
pooled connections. The credential is read from this replica's environment, so it never
travels through Ray's object store or the Serve controller's checkpoints.

It also checks the call's account scope before connecting: the ingress already ordered only
allowed backends, and this second check means no bug there can reach a forbidden provider."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from actors.providers import ADAPTERS
from actors.providers.client import DEFAULT_MAX_RESPONSE_BYTES, ProviderClient
from config.catalog import Price, ProviderSpec
from core.backend import Completion, Embeddings, StreamEnd, StreamStart, UpstreamCall, UpstreamFailure, refused_by_scope


class ProviderProxy:
    def __init__(self, name: str, spec: ProviderSpec, prices: dict[str, Price],
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES):
        self._name, self._in_house = name, spec.in_house
        api_key = os.environ.get(spec.credential_env)
        if not api_key:
            raise RuntimeError(f"{spec.credential_env} is not set in this replica's environment")
        self._client = ProviderClient(ADAPTERS[spec.adapter](spec, api_key), prices, max_response_bytes)

    def _refused(self, call: UpstreamCall) -> UpstreamFailure | None:
        return refused_by_scope(call, self._name, self._in_house)

    async def complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
        return self._refused(call) or await self._client.complete(call)

    async def count_tokens(self, call: UpstreamCall) -> int | UpstreamFailure:
        return self._refused(call) or await self._client.count_tokens(call)

    async def embed(self, call: UpstreamCall) -> Embeddings | UpstreamFailure:
        return self._refused(call) or await self._client.embed(call)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
        refused = self._refused(call)
        if refused is not None:
            yield refused
            return
        async for item in self._client.stream(call):
            yield item

    async def close(self) -> None:  # Serve calls it at shutdown (serve_app.app.as_replica)
        await self._client.aclose()
