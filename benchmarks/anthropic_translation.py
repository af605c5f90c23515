"""The CPU cost of translating a streamed Anthropic answer into OpenAI chunks, against the
OpenAI adapter's pass-through (which checks each chunk's shape and forwards it) as the baseline:

    .venv/bin/python -m benchmarks.anthropic_translation [--chunks 1000] [--repeat 15]

Feeds already-decoded SSE events (what the proxy hands a translator) of three streams: text
deltas, one tool call's argument fragments, and two parallel tool calls' fragments. Prints, per
stream, µs per chunk (the median of ``--repeat`` runs; the same number is ms per 1,000 chunks)
and the ratio to the OpenAI pass-through of the same content."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from actors.providers.anthropic_answer import AnthropicStreamTranslator
from actors.providers.openai_api import OpenAIStreamTranslator
from core.sse import SSEEvent


def _event(data: dict) -> SSEEvent:
    return SSEEvent(data["type"], json.dumps(data))


def anthropic_stream(chunks: int, tools: int) -> list[SSEEvent]:
    """``chunks`` deltas: text when ``tools`` is 0, else argument fragments spread over ``tools`` calls."""
    events = [_event({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}})]
    if tools == 0:
        events.append(_event({"type": "content_block_start", "index": 0,
                              "content_block": {"type": "text", "text": ""}}))
        events += [_event({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": " token"}}) for _ in range(chunks)]
        events.append(_event({"type": "content_block_stop", "index": 0}))
    for index in range(tools):
        events.append(_event({"type": "content_block_start", "index": index, "content_block": {
            "type": "tool_use", "id": f"toolu_{index}", "name": "get_weather", "input": {}}}))
        events += [_event({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": '"city": '}})
                   for _ in range(chunks // tools)]
        events.append(_event({"type": "content_block_stop", "index": index}))
    events += [_event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                       "usage": {"output_tokens": chunks}}), _event({"type": "message_stop"})]
    return events


def openai_stream(chunks: int, tools: int) -> list[SSEEvent]:
    """The same content as OpenAI streams it."""
    def chunk(delta: dict, finish: str | None = None) -> SSEEvent:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return SSEEvent(None, json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                          "model": "gpt-x", "choices": [choice]}))
    events = [chunk({"role": "assistant", "content": ""})]
    if tools == 0:
        events += [chunk({"content": " token"}) for _ in range(chunks)]
    for index in range(tools):
        events.append(chunk({"tool_calls": [{"index": index, "id": f"call_{index}", "type": "function",
                                             "function": {"name": "get_weather", "arguments": ""}}]}))
        events += [chunk({"tool_calls": [{"index": index, "function": {"arguments": '"city": '}}]})
                   for _ in range(chunks // tools)]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 10, "completion_tokens": chunks}
    events.append(SSEEvent(None, json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                                             "created": 1, "model": "gpt-x", "choices": [], "usage": usage})))
    events.append(SSEEvent(None, "[DONE]"))
    return events


def us_per_chunk(make: Callable[[], object], events: list[SSEEvent], chunks: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        translator = make()
        start = time.perf_counter_ns()
        for event in events:
            translator.feed(event)  # type: ignore[attr-defined]
        runs.append((time.perf_counter_ns() - start) / 1000 / chunks)
        assert translator.finished  # type: ignore[attr-defined]
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for label, tools in (("text deltas", 0), ("tool-argument deltas, 1 call", 1),
                         ("tool-argument deltas, 2 parallel calls", 2)):
        ours = us_per_chunk(lambda: AnthropicStreamTranslator(True), anthropic_stream(args.chunks, tools),
                            args.chunks, args.repeat)
        base = us_per_chunk(lambda: OpenAIStreamTranslator(True), openai_stream(args.chunks, tools),
                            args.chunks, args.repeat)
        rows.append((label, ours, base, ours / base))
    print(f"{args.chunks} chunks per stream, median of {args.repeat} runs "
          "(µs per chunk = ms per 1,000 chunks)")
    print(f"| {'stream':<40} | Anthropic µs/chunk | OpenAI pass-through µs/chunk | ratio |")
    print(f"|{'-' * 42}|-------------------:|-----------------------------:|------:|")
    for label, ours, base, ratio in rows:
        print(f"| {label:<40} | {ours:18.2f} | {base:28.2f} | {ratio:4.2f}x |")


if __name__ == "__main__":
    main()
