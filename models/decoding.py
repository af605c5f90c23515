"""One request's decoding in the transformers engine, apart from the model: how the next token is
chosen from the logits (a grammar's mask for structured outputs, OpenAI's penalties, greedy or
temperature + top-p), each token's logprobs, and where stop strings cut the completion.
Everything here runs on the engine's worker thread."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.engine import Sampling

GREEDY_BELOW = 1e-5  # a temperature this small means argmax (and avoids dividing by ~0)


@dataclass(slots=True)
class Decoder:
    """One request's decode state; only ever touched on the engine's worker thread."""

    sampling: Sampling
    generator: Any  # torch.Generator
    counts: Any = None  # torch tensor: how often each token id was generated (for the penalties)
    past: Any = None  # the KV cache
    ids: list[int] = field(default_factory=list)
    # Structured outputs: xgrammar's matcher for this request's grammar and its token bitmask.
    matcher: Any = None
    bitmask: Any = None


def constrain(decoder: Decoder, logits: Any) -> None:
    """Mask (in place) every token the grammar does not allow next."""
    if decoder.matcher is None:
        return
    import xgrammar

    decoder.matcher.fill_next_token_bitmask(decoder.bitmask)
    xgrammar.apply_token_bitmask_inplace(logits.unsqueeze(0), decoder.bitmask.to(logits.device))


def top_logprobs(logits: Any, token: int, count: int) -> tuple[float, list[tuple[int, float]]]:
    """The token's log probability under the model's own distribution (before penalties,
    temperature or a grammar, as vLLM reports them), and the ``count`` most likely (id, logprob)."""
    import torch

    logprobs = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logprobs, count) if count > 0 else None
    alternatives = [] if top is None else [(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)]
    return float(logprobs[token]), alternatives


def pick_token(decoder: Decoder, logits: Any) -> int:
    """OpenAI's penalties over the generated tokens, then argmax or temperature + top-p sampling."""
    import torch

    sampling = decoder.sampling
    if decoder.counts is not None and (sampling.frequency_penalty or sampling.presence_penalty):
        logits = (logits - sampling.frequency_penalty * decoder.counts
                  - sampling.presence_penalty * (decoder.counts > 0).float())
    if sampling.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probabilities, order = torch.sort(probabilities, descending=True)
        before = torch.cumsum(sorted_probabilities, dim=-1) - sorted_probabilities
        outside = before >= sampling.top_p
        outside[0] = False  # the most likely token always stays
        sorted_probabilities[outside] = 0.0
        choice = torch.multinomial(sorted_probabilities, 1, generator=decoder.generator)
        return int(order[choice])
    return int(torch.multinomial(probabilities, 1, generator=decoder.generator))


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that could still grow into a stop string: that much
    is held back, so no part of a stop string ever reaches the caller."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


def first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Where the earliest stop string starts in ``text``, or -1."""
    found = [index for index in (text.find(stop) for stop in stops if stop) if index >= 0]
    return min(found, default=-1)
