"""The Serve deployment of one in-house model (``Model-<name>``): a thin shell that loads the
engine and the tokenizer on its replica and hands calls to ``models.model_server``.

Replicas, resources, per-replica concurrency and the bounded queue come from the catalog
(``options_for``): Serve runs at most ``max_concurrency`` calls on a replica (the engine batches
them), queues up to ``max_queued`` more, and refuses the rest with a BackPressureError that the
ingress turns into 503 + Retry-After."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

from ray import serve

from config.catalog import EMBED, InHouseModelSpec, Price
from core import logs
from core.backend import Completion, Embeddings, LoraAdapter, StreamEnd, StreamStart, UpstreamCall, UpstreamFailure
from core.errors import GatewayError
from core.naming import model_deployment
from models.embedding_server import EmbeddingServer
from models.engine import Engine, EngineStats
from models.engine_choice import build_engine
from models.model_server import ModelServer
from models.model_source import offline_environment
from models.pooling import Embedder, build_embedder

logger = logging.getLogger("neuroapi.models")


def options_for(name: str, spec: InHouseModelSpec) -> dict[str, Any]:
    """``Deployment.options`` for a catalog entry."""
    # Tensor parallelism needs a whole GPU per rank; one rank may share a GPU (num_gpus 0.5).
    gpus = max(spec.num_gpus, spec.tensor_parallel_size) if spec.num_gpus and spec.tensor_parallel_size > 1 \
        else spec.num_gpus
    options: dict[str, Any] = {
        "name": model_deployment(name),
        "max_ongoing_requests": spec.max_concurrency,
        "max_queued_requests": spec.max_queued,
        "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": gpus},
        # A CPU engine busy with a batch may be slow to answer its health check.
        "health_check_timeout_s": 60,
        "graceful_shutdown_timeout_s": 30,
    }
    if spec.autoscaling is not None:
        options["autoscaling_config"] = spec.autoscaling.model_dump()
    else:
        options["num_replicas"] = spec.replicas
    return options


class InHouseModel:
    """One in-house model's replica: a ``ModelServer`` over its engine, with Serve's multiplexing
    deciding which fine-tunes stay resident, or for an embedding model (``task: embed``) an
    ``EmbeddingServer`` over its embedder. ``serve_app.app`` wraps it with ``options_for``."""

    async def __init__(self, name: str, spec: InHouseModelSpec, model_path: str, prices: dict[str, Price]):
        logs.install(in_replica=True)
        offline_environment()
        from transformers import AutoTokenizer

        self._embeddings: EmbeddingServer | None = None
        if spec.task == EMBED:  # an embedding model: POST /v1/embeddings only (``embed``)
            embedder = build_embedder(spec, Path(model_path))
            await embedder.start()
            tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
            self._embeddings = EmbeddingServer(name, spec, embedder, tokenizer, prices)
            self._engine: Engine | Embedder = embedder
            return
        engine = build_engine(spec, Path(model_path))
        await engine.start()
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self._server = ModelServer(name, spec, engine, tokenizer, prices)
        self._engine = engine
        # Serve keeps at most max_loras adapter ids per replica (LRU, as the engine does) and routes
        # an adapter's calls to replicas that already hold it; its LRU lives on a plain function.
        async def load(key: str) -> LoraAdapter:
            return await self._server.load_adapter(key)

        self._server.hold_adapters_with(serve.multiplexed(max_num_models_per_replica=spec.max_loras)(load))

    async def complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
        return await self._server.complete(call)

    async def count_tokens(self, call: UpstreamCall) -> int | UpstreamFailure:
        return await self._server.count_tokens(call)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
        async with aclosing(self._server.stream(call)) as items:  # Serve's cancel aborts the engine
            async for item in items:
                yield item

    async def embed(self, call: UpstreamCall) -> Embeddings | UpstreamFailure:
        if self._embeddings is None:  # routing sends only embedding models here
            return UpstreamFailure(GatewayError(400, "This model is not an embedding model.", param="model",
                                                code="model_not_embedding"), retriable=False, upstream_ms=0.0)
        return await self._embeddings.embed(call)

    async def engine_name(self) -> str:
        return self._engine.name

    async def stats(self) -> EngineStats:
        return self._engine.stats()

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def __del__(self) -> None:
        await self._engine.shutdown()
