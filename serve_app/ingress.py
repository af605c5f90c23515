"""The ingress: NeuroAPI's HTTP face as a Ray Serve deployment, and nothing else.

It builds one plain ``Gateway`` over the deployment handles it is bound to and serves
``build_api(gateway)``; ``serve_app.app`` wraps it with ``serve.ingress`` and ``serve.deployment``.
Per request the gateway authenticates from its key cache (a hop to the verifier pool only on a
miss), routes from the table it holds, and makes one hop: to the backend that serves the call."""

from __future__ import annotations

from fastapi import FastAPI
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Histogram

from config.settings import Settings
from core import logs
from serve_app.api import build_api
from serve_app.gateway import Gateway
from serve_app.ray_transport import RayBackends

# Buckets for the gateway's own time per request, in ms: fine where it should be (a few ms).
GATEWAY_MS_BOUNDARIES = [0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 100, 250, 500, 1000]


class Ingress:
    async def __init__(self, settings: Settings, redis_url: str, verifier: DeploymentHandle,
                       router: DeploymentHandle, backends: dict[str, DeploymentHandle],
                       batcher: DeploymentHandle | None, jobs: list[DeploymentHandle] | None = None):
        # jobs (housekeeping, the billing reporter): bound here only so that Serve runs them.
        logs.install(in_replica=True)
        histogram = Histogram(
            "neuroapi_gateway_added_ms", "Time NeuroAPI added to a chat completion before its response started, ms",
            boundaries=GATEWAY_MS_BOUNDARIES, tag_keys=("stream",))
        self.gateway = await Gateway(
            settings, redis_url, verifier, router, RayBackends(backends), batcher, backends,
            lambda ms, stream: histogram.observe(ms, tags={"stream": "true" if stream else "false"}),
        ).start()

    def __serve_build_asgi_app__(self) -> FastAPI:  # called by serve.ingress() after __init__
        return build_api(self.gateway)

    async def __del__(self) -> None:
        await self.gateway.close()
