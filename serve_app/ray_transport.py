"""``serve_app.endpoints.chat.fallback.Backends`` over Ray Serve deployment handles: the provider
proxies and the in-house models, by deployment name (``Backend.deployment``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from actors.routing.table import Backend
from core.backend import Completion, Embeddings, UpstreamCall, UpstreamFailure
from core.errors import GatewayError
from serve_app.endpoints.chat.fallback import StreamItem


def overloaded(error: BackPressureError) -> UpstreamFailure:
    """Every replica busy and the queue full: 503 with Retry-After (another candidate may serve)."""
    retry_after = max(1, round(getattr(error, "retry_after_s", None) or 1))
    return UpstreamFailure(GatewayError(
        503, "The model is at capacity; retry shortly.", "server_error", "model_overloaded",
        headers={"Retry-After": str(retry_after)}), retriable=True, upstream_ms=0.0)


class RayBackends:
    def __init__(self, deployments: dict[str, DeploymentHandle]):
        self._handles = deployments
        self._complete = {name: h.complete for name, h in deployments.items()}
        self._stream = {name: h.options(stream=True).stream for name, h in deployments.items()}

    def _method(self, backend: Backend, call: UpstreamCall, stream: bool):
        if call.adapter is None:
            return (self._stream if stream else self._complete)[backend.deployment]
        # Serve's multiplexing sends a fine-tune to the replicas that already hold its adapter.
        handle = self._handles[backend.deployment].options(stream=stream, multiplexed_model_id=call.adapter.key)
        return handle.stream if stream else handle.complete

    async def complete(self, backend: Backend, call: UpstreamCall) -> Completion | UpstreamFailure:
        try:
            return await self._method(backend, call, stream=False).remote(call)
        except BackPressureError as error:
            return overloaded(error)

    async def count_tokens(self, backend: Backend, call: UpstreamCall) -> int | UpstreamFailure:
        try:
            return await self._handles[backend.deployment].count_tokens.remote(call)
        except BackPressureError as error:
            return overloaded(error)

    async def embed(self, backend: Backend, call: UpstreamCall) -> Embeddings | UpstreamFailure:
        """``serve_app.endpoints.embeddings.service.EmbeddingBackends``: a provider proxy's or an
        in-house embedding model's ``embed``."""
        try:
            return await self._handles[backend.deployment].embed.remote(call)
        except BackPressureError as error:
            return overloaded(error)

    async def stream(self, backend: Backend, call: UpstreamCall) -> AsyncIterator[StreamItem]:
        response = self._method(backend, call, stream=True).remote(call)
        try:
            try:
                first = await anext(response)
            except BackPressureError as error:
                yield overloaded(error)
                return
            yield first
            async for item in response:
                yield item
        finally:
            # The caller left or the stream ended: cancelling closes the upstream request
            # (or aborts the generation in an in-house engine).
            response.cancel()
