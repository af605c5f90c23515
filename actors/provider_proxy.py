"""A provider proxy: one deployment per configured provider, holding its credential and its
pooled connections. The credential is read from this replica's environment, so it never
travels through Ray's object store or the Serve controller's checkpoints."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from ray import serve

from actors.providers import ADAPTERS
from actors.providers.base import Completion, StreamEnd, StreamStart, UpstreamCall, UpstreamFailure
from actors.providers.client import ProviderClient
from config import logs
from config.catalog import ProviderSpec


@serve.deployment(max_ongoing_requests=2000, ray_actor_options={"num_cpus": 0})
class ProviderProxy:
    def __init__(self, spec: ProviderSpec):
        logs.install(in_replica=True)
        api_key = os.environ.get(spec.credential_env)
        if not api_key:
            raise RuntimeError(f"{spec.credential_env} is not set in this replica's environment")
        self._client = ProviderClient(ADAPTERS[spec.adapter](spec, api_key))

    async def complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
        return await self._client.complete(call)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
        async for item in self._client.stream(call):
            yield item

    async def __del__(self) -> None:
        await self._client.aclose()
