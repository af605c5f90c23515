"""The Serve deployment of one in-house model (``Model-<name>``): a thin shell that loads the
engine and the tokenizer on its replica and hands calls to ``models.model_server``.

Replicas, resources, per-replica concurrency and the bounded queue come from the catalog
(``options_for``): Serve runs at most ``max_concurrency`` calls on a replica (the engine batches
them), queues up to ``max_queued`` more, and refuses the rest with a BackPressureError that the
ingress turns into 503 + Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve

from actors.providers.base import Completion, StreamEnd, StreamStart, UpstreamCall, UpstreamFailure
from config import logs
from config.catalog import InHouseModelSpec, Price
from models.engine import EngineStats
from models.engines import build_engine
from models.model_server import ModelServer
from models.model_source import offline_environment


def options_for(name: str, spec: InHouseModelSpec) -> dict[str, Any]:
    """``Deployment.options`` for a catalog entry."""
    gpus = max(spec.num_gpus, spec.tensor_parallel_size) if spec.num_gpus else 0
    options: dict[str, Any] = {
        "name": f"Model-{name}",
        "max_ongoing_requests": spec.max_concurrency,
        "max_queued_requests": spec.max_queued,
        "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": gpus},
        # Loading weights (and, on vLLM, profiling memory) takes a while on a first start.
        "health_check_timeout_s": 60,
        "graceful_shutdown_timeout_s": 30,
    }
    if spec.autoscaling is not None:
        options["autoscaling_config"] = spec.autoscaling.model_dump()
    else:
        options["num_replicas"] = spec.replicas
    return options


@serve.deployment
class InHouseModel:
    async def __init__(self, name: str, spec: InHouseModelSpec, model_path: str, price: Price | None):
        logs.install(in_replica=True)
        offline_environment()
        from transformers import AutoTokenizer

        engine = build_engine(spec, Path(model_path))
        await engine.start()
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self._server = ModelServer(name, spec, engine, tokenizer, price)

    async def complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
        return await self._server.complete(call)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
        async for item in self._server.stream(call):
            yield item

    async def engine_name(self) -> str:
        return self._server.engine.name

    async def stats(self) -> EngineStats:
        return self._server.engine.stats()

    async def check_health(self) -> None:
        await self._server.engine.check_health()

    async def __del__(self) -> None:
        await self._server.engine.shutdown()
