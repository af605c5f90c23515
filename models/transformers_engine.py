"""Plain ``transformers`` + ``torch`` behind the engine interface: the fallback for machines where
no vLLM build installs (CPU, or a CUDA GPU if torch sees one).

Structured outputs (a JSON schema, or any JSON object) use xgrammar, the library behind vLLM's
default backend: a grammar compiled for this tokenizer masks the logits of every step; ``n`` > 1
is refused (``unsupported``), one request at a time being this engine's whole design.

It serves one request at a time (an ``asyncio.Lock``) with a hand-written decode loop: a prefill
of the prompt, then one token per step with the model's KV cache. Batching many requests
together is vLLM's job; this engine only has to be correct and keep the event loop free, so
every forward pass runs on one dedicated worker thread. Nothing is downloaded: the model is a
folder on disk, loaded with ``local_files_only`` and the hub switched off.

LoRA fine-tunes go through PEFT: the first adapter wraps the model in a ``PeftModel``, later ones
are added to it, at most ``max_loras`` stay (least recently used deleted). As requests run one at
a time, each request first switches the model to its adapter, or switches adapters off."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from core.backend import LoraAdapter
from models.decoding import Decoder, constrain, first_stop, pick_token, stop_prefix_length, top_logprobs
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
from models.model_source import offline_environment

T = TypeVar("T")
DTYPES = {"float32": "float32", "float": "float32", "fp32": "float32", "float16": "float16",
          "half": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


@dataclass(slots=True)
class _Request:
    """What ``abort`` can reach while a request waits for the lock or generates."""

    aborted: bool = False


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, options: EngineOptions):
        self._options = options
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._eos: frozenset[int] = frozenset()
        self._lock = asyncio.Lock()  # one request at a time: batching is vLLM's job
        # One worker thread for all torch work: a step still running after its request was
        # cancelled finishes before the next request's first step starts.
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._requests: dict[str, _Request] = {}
        self._running = 0
        self._finished = 0
        self._aborted = 0
        # LoRA: the PeftModel once an adapter was loaded (then also ``_model``), and the resident
        # adapters, least recently used first: key -> PEFT adapter name. PEFT's names are our own
        # ("lora1", ...), as a key may hold characters (".") a module name cannot.
        self._peft: Any = None
        self._adapters: OrderedDict[str, str] = OrderedDict()
        self._adapter_count = 0
        self._grammars: Any = None  # xgrammar.GrammarCompiler for this tokenizer, made on first use

    async def _on_worker(self, function: Callable[..., T], *arguments: Any) -> T:
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="transformers-engine")
        return await asyncio.get_running_loop().run_in_executor(self._worker, function, *arguments)

    # -- loading ---------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._on_worker(self._load)
        except EngineError:
            raise
        except Exception as error:
            raise EngineError(f"transformers could not load {self._options.model_path.name}: "
                              f"{type(error).__name__}: {error}") from None

    def _load(self) -> None:
        offline_environment()  # a missing file fails instead of reaching for a model hub
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self._options.model_path
        if not path.is_dir():
            raise EngineError(f"the model folder {path} does not exist")
        gpu = torch.cuda.is_available()
        device = torch.device("cuda" if gpu else "cpu")
        dtype: Any
        if self._options.dtype != "auto":
            if self._options.dtype not in DTYPES:
                raise EngineError(f"unknown dtype '{self._options.dtype}' (known: {', '.join(DTYPES)}, auto)")
            dtype = getattr(torch, DTYPES[self._options.dtype])
        else:
            # CPU: float32, as bf16/fp16 matmuls there are slow or inexact; GPU: as the model was saved.
            dtype = "auto" if gpu else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        model.to(device).eval()
        self._tokenizer, self._model, self._device = tokenizer, model, device
        self._eos = self._eos_ids()

    def _eos_ids(self) -> frozenset[int]:
        """Every id that ends a completion: the generation config's (one or a list) and the tokenizer's."""
        configured = getattr(self._model.generation_config, "eos_token_id", None)
        if configured is None:
            configured = getattr(self._model.config, "eos_token_id", None)
        ids: set[int] = set()
        for found in (configured, self._tokenizer.eos_token_id):
            if isinstance(found, int):
                ids.add(found)
            elif isinstance(found, list | tuple):
                ids.update(i for i in found if isinstance(i, int))
        if not ids:
            raise EngineError(f"{self._options.model_path.name} names no end-of-sequence token")
        return frozenset(ids)

    def _reload_base(self) -> None:
        """A fresh copy of the base weights, when a failed first adapter left PEFT layers in them."""
        self._model = self._peft = None
        self._adapters.clear()
        self._free_memory()
        self._load()

    # -- LoRA adapters ------------------------------------------------------------------------

    async def load_adapter(self, adapter: LoraAdapter) -> None:
        async with self._lock:
            await self._ensure_adapter(adapter)

    async def _ensure_adapter(self, adapter: LoraAdapter) -> str:
        """The adapter's PEFT name, loading it first if it is not resident (the lock is held)."""
        if self._model is None:
            raise EngineError("the transformers engine is not running")
        name = self._adapters.get(adapter.key)
        if name is not None:
            self._adapters.move_to_end(adapter.key)
            return name
        check_adapter(adapter, self._options.max_lora_rank)
        self._adapter_count += 1
        name = f"lora{self._adapter_count}"
        try:
            await self._on_worker(self._load_adapter, adapter, name)
        except Exception as error:
            raise EngineError(f"adapter {adapter.key} did not load: {type(error).__name__}: {error}") from None
        self._adapters[adapter.key] = name
        while len(self._adapters) > self._options.max_loras:
            _, evicted = self._adapters.popitem(last=False)
            await self._on_worker(self._peft.delete_adapter, evicted)
        return name

    def _load_adapter(self, adapter: LoraAdapter, name: str) -> None:
        offline_environment()
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        path = str(adapter.path)
        if self._peft is not None:
            try:
                self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
            except BaseException:
                if name in self._peft.peft_config:  # PEFT added its layers before the weights failed
                    self._peft.delete_adapter(name)
                raise
            return
        base = self._model
        try:
            peft = PeftModel.from_pretrained(base, path, adapter_name=name, is_trainable=False)
        except BaseException:
            # from_pretrained puts LoRA layers into the base model before it loads the weights.
            if any(isinstance(module, BaseTunerLayer) for module in base.modules()):
                self._reload_base()
            raise
        peft.eval()
        self._peft = self._model = peft

    def _activate(self, name: str | None) -> None:
        """The model as one request needs it: one adapter on, or (``None``) the base model."""
        if self._peft is None:
            return
        if name is None:
            self._peft.base_model.disable_adapter_layers()
        else:
            self._peft.set_adapter(name, inference_mode=True)
            self._peft.base_model.enable_adapter_layers()

    async def unload_adapter(self, key: str) -> None:
        async with self._lock:
            name = self._adapters.pop(key, None)
            if name is not None and self._peft is not None:
                await self._on_worker(self._delete_adapter, name)

    def _delete_adapter(self, name: str) -> None:
        if self._adapters:
            self._peft.delete_adapter(name)
        else:  # PEFT cannot run without an adapter: back to the plain model
            self._model = self._peft.base_model.unload()
            self._peft = None

    def resident_adapters(self) -> list[str]:
        return list(self._adapters)

    # -- the decode loop --------------------------------------------------------------------

    def unsupported(self, sampling: Sampling) -> str | None:
        if sampling.n > 1:
            return "'n' above 1 is not supported by this model (its transformers engine makes one completion)"
        return None

    def _new_decoder(self, sampling: Sampling) -> Decoder:
        import torch

        generator = torch.Generator(device=self._device)
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
        else:
            generator.seed()
        decoder = Decoder(sampling, generator)
        if sampling.structured is not None:
            self._add_grammar(decoder, sampling.structured.json_schema)
        return decoder

    def _add_grammar(self, decoder: Decoder, json_schema: str | None) -> None:
        import xgrammar

        vocab_size = self._model.get_output_embeddings().weight.shape[0]  # the logits' width
        if self._grammars is None:
            info = xgrammar.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=vocab_size,
                                                           stop_token_ids=sorted(self._eos))
            self._grammars = xgrammar.GrammarCompiler(info)
        try:
            grammar = (self._grammars.compile_json_schema(json_schema) if json_schema is not None
                       else self._grammars.compile_builtin_json_grammar())
        except Exception as error:
            raise RequestRefused(f"response_format's JSON schema could not be compiled for constrained "
                                 f"decoding ({type(error).__name__})") from None
        decoder.matcher = xgrammar.GrammarMatcher(grammar)
        decoder.bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)

    def _step(self, decoder: Decoder, input_ids: list[int]) -> tuple[int, str, TokenLogprob | None]:
        """One forward pass (the whole prompt first, then the last token): the next token, the
        completion so far decoded, and the token's logprobs when asked for."""
        import torch

        sampling = decoder.sampling
        with torch.inference_mode():
            inputs = torch.tensor([input_ids], dtype=torch.long, device=self._device)
            output = self._model(input_ids=inputs, past_key_values=decoder.past, use_cache=True)
            decoder.past = output.past_key_values
            logits = output.logits[0, -1].float()
            raw = logits.clone() if sampling.logprobs is not None else None
            constrain(decoder, logits)
            token = pick_token(decoder, logits)
            if decoder.matcher is not None and not decoder.matcher.accept_token(token):
                raise EngineError("the grammar refused the sampled token")
            if decoder.counts is None:
                decoder.counts = torch.zeros(logits.shape[-1], dtype=torch.float32, device=self._device)
            decoder.counts[token] += 1
            logprob = None
            if raw is not None:
                chosen, top = top_logprobs(raw, token, sampling.logprobs)
                logprob = TokenLogprob(self._tokenizer.decode([token]), chosen,
                                       tuple((self._tokenizer.decode([i]), value) for i, value in top))
        decoder.ids.append(token)
        # The whole completion each time: a byte-level BPE merges across token boundaries, and
        # decoding is cheap next to a forward pass.
        text = self._tokenizer.decode(decoder.ids, skip_special_tokens=not sampling.keep_special_tokens)
        return token, text, logprob


    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: Sampling,
                       adapter: LoraAdapter | None = None) -> AsyncIterator[Delta]:
        """Stream the completion, one forward pass per step on the worker thread (with the
        adapter on: loaded first if it is not resident).

        A stream that ends without a finish_reason was aborted; ``stats`` counts it (and a failed
        request, which raises EngineError) as aborted, like the vLLM engine does."""
        request = _Request()
        self._requests[request_id] = request
        self._running += 1
        finished = False
        try:
            if adapter is not None and self._options.max_lora_rank <= 0:
                raise EngineError(LORA_OFF)
            refused = self.unsupported(sampling)
            if refused is not None:
                raise EngineError(refused)
            async with self._lock:
                if self._model is None:
                    raise EngineError("the transformers engine is not running")
                self._check_lengths(prompt_token_ids, sampling)
                name = await self._ensure_adapter(adapter) if adapter is not None else None
                if self._peft is not None:
                    await self._on_worker(self._activate, name)
                try:
                    decoder = await self._on_worker(self._new_decoder, sampling)
                except EngineError:
                    raise
                except Exception as error:
                    raise EngineError(f"decoding could not start: {type(error).__name__}") from None
                stops = tuple(stop for stop in sampling.stop if stop)
                emitted = 0  # characters of the decoded completion already sent
                pending: list[TokenLogprob] = []  # logprobs of tokens whose text is held back
                next_input = list(prompt_token_ids)
                while not request.aborted:
                    try:
                        token, text, logprob = await self._on_worker(self._step, decoder, next_input)
                    except EngineError:
                        raise
                    except Exception as error:
                        raise EngineError(f"generation failed: {type(error).__name__}") from None
                    if logprob is not None:
                        pending.append(logprob)
                    next_input = [token]
                    reason, end = self._finish(decoder, token, text, stops)
                    if reason is None and not text.endswith("\ufffd"):  # hold an incomplete UTF-8 char
                        end = len(text) - stop_prefix_length(text, stops)
                    piece = text[emitted:end] if end > emitted else ""
                    emitted = max(emitted, end)
                    if reason is not None:
                        finished = True
                        yield Delta(piece, len(decoder.ids), reason, logprobs=tuple(pending))
                        return
                    if piece:
                        yield Delta(piece, len(decoder.ids), logprobs=tuple(pending))
                        pending = []
        finally:
            if self._requests.get(request_id) is request:  # a reused id may belong to a newer request
                del self._requests[request_id]
            self._running -= 1
            if finished:
                self._finished += 1
            else:  # aborted, closed early by the caller, cancelled, or failed
                self._aborted += 1

    def _check_lengths(self, prompt_token_ids: list[int], sampling: Sampling) -> None:
        if not prompt_token_ids:
            raise EngineError("the prompt has no tokens")
        if sampling.max_tokens < 1:
            raise EngineError("max_tokens must be at least 1")
        if len(prompt_token_ids) + sampling.max_tokens > self._options.max_model_len:
            raise EngineError(f"the prompt ({len(prompt_token_ids)} tokens) and max_tokens "
                              f"({sampling.max_tokens}) exceed max_model_len {self._options.max_model_len}")

    def _finish(self, decoder: Decoder, token: int, text: str, stops: tuple[str, ...]) -> tuple[str | None, int]:
        """Whether the completion ends after ``token``, and how much of ``text`` it then shows."""
        cut = first_stop(text, stops) if stops else -1
        if cut >= 0:
            return "stop", cut
        if token in self._eos:
            return "stop", len(text)
        if len(decoder.ids) >= decoder.sampling.max_tokens:
            return "length", len(text)
        return None, 0

    # -- control ------------------------------------------------------------------------------

    async def abort(self, request_id: str) -> None:
        """Mark the request; its loop stops before the next step (a step in flight completes)."""
        request = self._requests.get(request_id)
        if request is not None:
            request.aborted = True

    async def check_health(self) -> None:
        if self._model is None:
            raise EngineError("the transformers engine is not running")

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running, finished=self._finished, aborted=self._aborted)

    async def shutdown(self) -> None:
        """Drop the weights (and the CUDA cache) once any step in flight is done."""
        for request in self._requests.values():
            request.aborted = True
        async with self._lock:
            self._model = self._peft = None
            self._tokenizer = None
            self._adapters.clear()
            await self._on_worker(self._free_memory)
            if self._worker is not None:
                self._worker.shutdown(wait=False)
                self._worker = None

    @staticmethod
    def _free_memory() -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
