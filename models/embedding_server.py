"""One in-house embedding model on one replica: a validated embeddings request in (``input`` a list
of strings or of token arrays), an ``Embeddings`` value out, priced on its input tokens, or an
``UpstreamFailure``, never an exception: the ingress treats it like a provider proxy's answer.

Plain Python over an ``Embedder`` and the model's tokenizer; ``models.deployment`` is its Serve
shell. Strings are tokenised without a chat template or special tokens; a token array is taken as
this model's token ids (OpenAI's are its own tokenizer's, so arrays are not portable between models)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from config.catalog import InHouseModelSpec, Price
from core.backend import Embeddings, UpstreamCall, UpstreamFailure, Usage, refused_by_scope
from core.errors import GatewayError, upstream_error
from core.money import price_for
from core.naming import IN_HOUSE_PROVIDER
from models.engine import EngineError
from models.pooling import MAX_REQUEST_TOKENS, Embedder, as_bytes, shortened

logger = logging.getLogger("neuroapi.models")


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _refused(message: str, param: str = "input") -> UpstreamFailure:
    return UpstreamFailure(GatewayError(400, message, param=param, code="invalid_value"), retriable=False,
                           upstream_ms=0.0)


class EmbeddingServer:
    def __init__(self, name: str, spec: InHouseModelSpec, embedder: Embedder, tokenizer: Any,
                 prices: Mapping[str, Price]):
        self.name, self.spec, self.embedder = name, spec, embedder
        self._tokenizer = tokenizer
        self._vocabulary = len(tokenizer)
        self._price = price_for(prices, name)

    def _token_ids(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """Every input's token ids; raises GatewayError (400) for ids outside the vocabulary or an
        input past the model's context, as OpenAI words it."""
        if isinstance(inputs[0], str):
            ids = self._tokenizer(list(inputs), add_special_tokens=False)["input_ids"]
        else:
            ids = [list(tokens) for tokens in inputs]
            if any(not 0 <= token < self._vocabulary for tokens in ids for token in tokens):
                raise GatewayError(400, f"Invalid token id in 'input': this model's token ids are 0 to "
                                        f"{self._vocabulary - 1}.", param="input", code="invalid_value")
        for index, tokens in enumerate(ids):
            if not tokens:
                raise GatewayError(400, f"'input[{index}]' has no tokens.", param="input", code="invalid_value")
            if len(tokens) > self.spec.max_model_len:
                raise GatewayError(400, f"This model's maximum context length is {self.spec.max_model_len} tokens, "
                                        f"however you requested {len(tokens)} tokens in 'input[{index}]'. "
                                        "Please reduce your input.", param="input", code="context_length_exceeded")
        total = sum(map(len, ids))
        if total > MAX_REQUEST_TOKENS:
            raise GatewayError(400, f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request.",
                               param="input", code="max_tokens_per_request")
        return ids

    async def embed(self, call: UpstreamCall) -> Embeddings | UpstreamFailure:
        started = time.perf_counter()
        refused = refused_by_scope(call, IN_HOUSE_PROVIDER, in_house=True)
        if refused is not None:
            return refused
        dimensions = call.body.get("dimensions")
        if dimensions is not None and dimensions > self.embedder.dimensions:
            return _refused(f"'dimensions' must be at most {self.embedder.dimensions} for {self.name}.",
                            param="dimensions")
        try:  # a large batch takes a while to tokenize: off the replica's event loop
            ids = await asyncio.to_thread(self._token_ids, call.body["input"])
        except GatewayError as error:
            return UpstreamFailure(error, retriable=False, upstream_ms=0.0)
        try:
            vectors = shortened(await self.embedder.embed(ids), dimensions)
        except EngineError as error:
            logger.warning("model %s failed an embeddings request: %s", self.name, error)
            return UpstreamFailure(upstream_error("The in-house model failed while answering."), retriable=True,
                                   upstream_ms=_elapsed_ms(started))
        usage = Usage(sum(map(len, ids)), 0).priced(self._price)
        return Embeddings(as_bytes(vectors), len(ids), int(vectors.shape[1]), usage, _elapsed_ms(started))
