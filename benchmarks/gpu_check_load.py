"""The load ``benchmarks.gpu_check`` puts on the engine alone and on the gateway alike: levels of
concurrent streams, each request's completion tokens and time to first token."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from benchmarks.gpu_check_report import fmt_ms


def messages(index: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Request {index}: write a long story about the number {index}."}]


@dataclass(frozen=True, slots=True)
class Sample:
    completion_tokens: int
    ttft_s: float | None  # until the first token's text; None if none came


@dataclass(frozen=True, slots=True)
class Level:
    concurrency: int
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float | None
    early_stops: int  # requests that ended before max_tokens


OneRequest = Callable[[int], Awaitable[Sample]]


def requests_per_stream(concurrency: int, rounds: int) -> int:
    return max(rounds, 3) if concurrency == 1 else rounds


async def run_level(one: OneRequest, concurrency: int, rounds: int, max_tokens: int, first_index: int) -> Level:
    """``concurrency`` streams at once, each running its requests back to back."""
    per_stream = requests_per_stream(concurrency, rounds)

    async def stream(worker: int) -> list[Sample]:
        return [await one(first_index + worker * per_stream + k) for k in range(per_stream)]

    started = time.perf_counter()
    samples = [s for batch in await asyncio.gather(*(stream(w) for w in range(concurrency))) for s in batch]
    wall = time.perf_counter() - started
    tokens = sum(s.completion_tokens for s in samples)
    ttfts = [s.ttft_s for s in samples if s.ttft_s is not None]
    return Level(concurrency, len(samples), tokens, round(wall, 3), round(tokens / wall, 1),
                 round(statistics.median(ttfts), 4) if ttfts else None,
                 sum(s.completion_tokens < max_tokens for s in samples))


async def run_levels(one: OneRequest, label: str, args: argparse.Namespace) -> dict[int, Level]:
    await one(10_000_000)  # warm-up, not measured
    levels: dict[int, Level] = {}
    for number, concurrency in enumerate(args.concurrency):
        level = await run_level(one, concurrency, args.rounds, args.max_tokens, number * 100_000)
        print(f"{label:>8} c={concurrency:<3} {level.tokens_per_s:>9.1f} tok/s  ttft p50 "
              f"{fmt_ms(level.ttft_p50_s)}  ({level.requests} requests, {level.completion_tokens} tokens, "
              f"{level.wall_s:.1f}s, {level.early_stops} early stops)", flush=True)
        levels[concurrency] = level
    return levels
