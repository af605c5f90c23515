"""Embeddings from a model's last hidden state (an in-house model with ``task: embed``).

The vector of one input is the mean of the last hidden state over the input's tokens, L2-normalised
(float32). ``dimensions`` keeps the first n values and normalises again, as OpenAI's matryoshka
models (text-embedding-3) shorten theirs. Two embedders compute it behind one interface: vLLM's
pooling runner (``runner="pooling"``, ``convert="embed"``, MEAN pooling), which batches every
request continuously, and transformers on the replica's worker thread, which pads a batch on the
right (a causal model's valid tokens never see the padding) and masks it out of the mean.

Vectors leave as float32 little-endian bytes (``as_bytes``): what OpenAI's base64 carries, so
nothing is formatted as text and parsed back on the way."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy

from config.catalog import InHouseModelSpec
from models.engine import EngineError, EngineOptions, EngineStats

T = TypeVar("T")
# OpenAI's limits on one embeddings request, which the in-house models keep too.
MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
# One transformers forward pass holds at most this many (padded) tokens: bounded memory per step.
BATCH_TOKENS = 8192


# -- the maths -------------------------------------------------------------------------------
def mean_pool(hidden: Any, mask: Any) -> Any:
    """torch: the mean of ``hidden`` [batch, tokens, width] over the tokens where ``mask``
    [batch, tokens] is 1."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def normalized(vectors: numpy.ndarray) -> numpy.ndarray:
    """Each row divided by its L2 norm (a zero row stays zero), in float32."""
    vectors = numpy.asarray(vectors, dtype=numpy.float32)
    norms = numpy.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / numpy.maximum(norms, numpy.float32(1e-12))).astype(numpy.float32)


def shortened(vectors: numpy.ndarray, dimensions: int | None) -> numpy.ndarray:
    """The first ``dimensions`` values of each row, renormalised (None: the rows as they are)."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    return normalized(vectors[:, :dimensions])


def as_bytes(vectors: numpy.ndarray) -> bytes:
    """The rows as float32 little-endian, one after the other."""
    return numpy.ascontiguousarray(vectors, dtype="<f4").tobytes()


def batches(lengths: Sequence[int], budget: int = BATCH_TOKENS) -> list[list[int]]:
    """Indices of the inputs grouped for forward passes of at most ``budget`` padded tokens (an
    input longer than that alone); inputs of similar length go together, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for index in order:
        group = groups[-1] if groups else None
        # Sorted longest first: the group's first input sets its padded length.
        if group is not None and lengths[group[0]] * (len(group) + 1) <= budget:
            group.append(index)
        else:
            groups.append([index])
    return groups


# -- the interface ---------------------------------------------------------------------------
class Embedder(ABC):
    """One embedding model loaded on this replica: token ids in, normalised vectors out."""

    name: str  # "vllm-gpu", "vllm-cpu" or "transformers": what /v1/models reports
    dimensions: int = 0  # the vectors' length, known once started

    def __init__(self) -> None:
        self._running = self._finished = self._aborted = 0

    @abstractmethod
    async def start(self) -> None:
        """Load the weights; raises EngineError if the model cannot run here."""

    async def embed(self, inputs: list[list[int]]) -> numpy.ndarray:
        """[len(inputs), dimensions] float32, each row L2-normalised; raises EngineError.
        Cancelling it stops the work (between forward passes, or in vLLM's engine core)."""
        self._running += 1
        done = False
        try:
            vectors = await self._embed(inputs)
            done = True
            return vectors
        finally:
            self._running -= 1
            if done:
                self._finished += 1
            else:
                self._aborted += 1

    @abstractmethod
    async def _embed(self, inputs: list[list[int]]) -> numpy.ndarray: ...

    @abstractmethod
    async def check_health(self) -> None:
        """Raise EngineError if the embedder can no longer serve."""

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running, finished=self._finished, aborted=self._aborted)

    @abstractmethod
    async def shutdown(self) -> None: ...


# -- transformers ------------------------------------------------------------------------------
class TransformersEmbedder(Embedder):
    """The base model (no LM head) on one worker thread, one request at a time, in padded
    batches of at most ``BATCH_TOKENS`` tokens."""

    name = "transformers"

    def __init__(self, options: EngineOptions):
        super().__init__()
        self._options = options
        self._model: Any = None
        self._device: Any = None
        self._lock = asyncio.Lock()
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    async def _on_worker(self, function: Callable[..., T], *arguments: Any) -> T:
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="transformers-embedder")
        return await asyncio.get_running_loop().run_in_executor(self._worker, function, *arguments)

    async def start(self) -> None:
        try:
            await self._on_worker(self._load)
        except EngineError:
            raise
        except Exception as error:
            raise EngineError(f"transformers could not load {self._options.model_path.name}: "
                              f"{type(error).__name__}: {error}") from None

    def _load(self) -> None:
        from models.model_source import offline_environment
        from models.transformers_engine import DTYPES

        offline_environment()
        import torch
        from transformers import AutoModel

        path = self._options.model_path
        if not path.is_dir():
            raise EngineError(f"the model folder {path} does not exist")
        gpu = torch.cuda.is_available()
        if self._options.dtype != "auto":
            if self._options.dtype not in DTYPES:
                raise EngineError(f"unknown dtype '{self._options.dtype}' (known: {', '.join(DTYPES)}, auto)")
            dtype: Any = getattr(torch, DTYPES[self._options.dtype])
        else:
            dtype = "auto" if gpu else torch.float32  # CPU: bf16/fp16 are slow or inexact there
        # AutoModel on a *ForCausalLM checkpoint: the base model, its last hidden state, no LM head.
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        self._device = torch.device("cuda" if gpu else "cpu")
        self._model = model.to(self._device).eval()
        self.dimensions = int(model.config.hidden_size)

    async def _embed(self, inputs: list[list[int]]) -> numpy.ndarray:
        rows: list[Any] = [None] * len(inputs)
        async with self._lock:
            if self._model is None:
                raise EngineError("the transformers embedder is not running")
            for group in batches([len(ids) for ids in inputs]):
                try:
                    vectors = await self._on_worker(self._forward, [inputs[i] for i in group])
                except Exception as error:
                    raise EngineError(f"embedding failed: {type(error).__name__}") from None
                for index, vector in zip(group, vectors, strict=True):
                    rows[index] = vector
        return numpy.stack(rows) if rows else numpy.zeros((0, self.dimensions), numpy.float32)

    def _forward(self, inputs: list[list[int]]) -> numpy.ndarray:
        import torch

        width = max(len(ids) for ids in inputs)
        ids = torch.zeros((len(inputs), width), dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, tokens in enumerate(inputs):  # padded on the right: positions stay 0..n-1
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, :len(tokens)] = 1
        with torch.inference_mode():
            hidden = self._model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device)).last_hidden_state
            pooled = mean_pool(hidden.float(), mask.to(self._device))
        return normalized(pooled.cpu().numpy())

    async def check_health(self) -> None:
        if self._model is None:
            raise EngineError("the transformers embedder is not running")

    async def shutdown(self) -> None:
        async with self._lock:
            self._model = None
            if self._worker is not None:
                self._worker.shutdown(wait=False)
                self._worker = None


# -- vLLM ----------------------------------------------------------------------------------------
def pooling_arguments(options: EngineOptions, gpu: bool) -> dict:
    """``AsyncEngineArgs`` fields for an embedding model: the chat engine's (no LoRA), on vLLM's
    pooling runner with a MEAN pooler (``pooler_config`` as a dict; ``VLLMEmbedder`` makes it a
    ``PoolerConfig``). The catalog's ``engine_kwargs`` still win."""
    from models.vllm_engine import engine_arguments

    arguments = engine_arguments(replace(options, max_lora_rank=0, extra={}), gpu)
    arguments |= {"runner": "pooling", "convert": "embed", "pooler_config": {"pooling_type": "MEAN"}}
    return arguments | options.extra


class VLLMEmbedder(Embedder):
    """vLLM's ``AsyncLLM`` with the pooling runner: each input one ``encode`` request (the engine
    batches them); a cancelled call aborts its requests in the engine core."""

    def __init__(self, options: EngineOptions):
        super().__init__()
        from models.vllm_engine import has_gpu

        self._options = options
        self._gpu = has_gpu()
        self.name = "vllm-gpu" if self._gpu else "vllm-cpu"
        self._engine: Any = None

    async def start(self) -> None:
        from vllm import AsyncEngineArgs
        from vllm.config import PoolerConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            arguments = pooling_arguments(self._options, self._gpu)
            if isinstance(arguments.get("pooler_config"), dict):
                arguments["pooler_config"] = PoolerConfig(**arguments["pooler_config"])
            self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**arguments))
            self.dimensions = int(self._engine.model_config.get_hidden_size())
        except Exception as error:
            raise EngineError(f"vLLM could not load {self._options.model_path.name} for embeddings: "
                              f"{type(error).__name__}: {error}") from None

    async def _embed(self, inputs: list[list[int]]) -> numpy.ndarray:
        from vllm import PoolingParams, TokensPrompt

        if self._engine is None:
            raise EngineError("the vLLM embedder is not running")

        async def one(ids: list[int]) -> numpy.ndarray:
            final = None
            async for output in self._engine.encode(TokensPrompt(prompt_token_ids=ids),
                                                    PoolingParams(task="embed"), uuid.uuid4().hex):
                final = output
            if final is None:
                raise EngineError("vLLM gave no embedding")
            return final.outputs.data.float().cpu().numpy()

        try:
            vectors = await asyncio.gather(*(one(ids) for ids in inputs))
        except EngineError:
            raise
        except Exception as error:
            raise EngineError(f"embedding failed: {type(error).__name__}") from None
        # vLLM's embed pooler normalises by default (its switch was ``normalize``, now ``use_activation``,
        # in PoolingParams); normalising here keeps the promise whatever the version says.
        return normalized(numpy.stack(vectors))

    async def check_health(self) -> None:
        if self._engine is None or self._engine.errored:
            raise EngineError("the vLLM embedder is not running")
        await self._engine.check_health()

    def stats(self) -> EngineStats:
        base = super().stats()
        running = self._engine.get_num_unfinished_requests() if self._engine is not None else 0
        return replace(base, running=running)

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def build_embedder(spec: InHouseModelSpec, model_path: Path) -> Embedder:
    from models.engine_choice import engine_kind, engine_options

    options = engine_options(spec, model_path)
    return VLLMEmbedder(options) if engine_kind(spec.engine) == "vllm" else TransformersEmbedder(options)
