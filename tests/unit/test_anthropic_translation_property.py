"""Property: whatever tool calls Claude streams, however their JSON is fragmented, however the
blocks interleave and however the network cuts the bytes, the caller reassembles exactly those
tool calls (ids, names, parsed arguments, order) and exactly the text."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_anthropic_translation import (
    block_delta,
    block_start,
    block_stop,
    deltas,
    message_end,
    message_start,
    reassembled_tool_calls,
    sdk_message,
    sse_bytes,
    translate_stream,
)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
tool_inputs = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
tool_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,20}", fullmatch=True)


def fragments(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:])]


@st.composite
def streamed_answers(draw) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(Anthropic events, the tool calls they carry, the text they carry)."""
    tools = draw(st.lists(tool_names, min_size=1, max_size=3, unique=True))
    kinds = draw(st.lists(st.sampled_from(["tool", "tool", "text"]), min_size=1, max_size=8))
    blocks: list[list[dict[str, Any]]] = []  # each block's events, start to stop, index set later
    calls = []
    for position, kind in enumerate(kinds):
        if kind == "text":
            words = draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4))
            blocks.append([block_start(0, {"type": "text", "text": ""}),
                           *[block_delta(0, {"type": "text_delta", "text": w}) for w in words],
                           block_stop(0)])
            continue
        tool_input = draw(tool_inputs)
        call = {"id": f"toolu_{position:02d}{draw(st.text('abcdef0123456789', min_size=4, max_size=4))}",
                "name": draw(st.sampled_from(tools)), "input": tool_input}
        calls.append(call)
        raw = json.dumps(tool_input, ensure_ascii=draw(st.booleans()))
        pieces = fragments(raw, draw(st.lists(st.integers(0, 10**6), max_size=40)))
        if draw(st.booleans()):
            pieces.insert(0, "")  # Anthropic often opens with an empty partial_json
        start = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
        blocks.append([block_start(0, start),
                       *[block_delta(0, {"type": "input_json_delta", "partial_json": p}) for p in pieces],
                       block_stop(0)])
    # Anthropic sends blocks one after another; interleaving them too checks that nothing
    # depends on that (each block keeps its own order).
    events: list[dict[str, Any]] = []
    if draw(st.booleans()):
        for block in blocks:
            events += block
    else:
        pending = [list(block) for block in blocks]
        while any(pending):
            events.append(pending[draw(st.sampled_from([i for i, p in enumerate(pending) if p]))].pop(0))
    started: dict[int, int] = {}  # block -> its Anthropic index: blocks are numbered as they start
    owner = {id(event): n for n, block in enumerate(blocks) for event in block}
    for event in events:
        event["index"] = started.setdefault(owner[id(event)], len(started))
    inputs = {call["id"]: call["input"] for call in calls}
    calls_sent = [{**e["content_block"], "input": inputs[e["content_block"]["id"]]} for e in events
                  if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use"]
    text_sent = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    stop = "tool_use" if calls else "end_turn"
    return [message_start(), *events, *message_end(stop, {"output_tokens": 5})], calls_sent, text_sent


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=streamed_answers(), network_cuts=st.lists(st.integers(0, 10**7), max_size=30))
def test_the_caller_receives_exactly_the_tool_calls_claude_sent(answer, network_cuts):
    events, calls, text = answer
    stream = sse_bytes(events)
    chunks, translator = translate_stream(stream, reads=[c % (len(stream) + 1) for c in network_cuts])
    received = reassembled_tool_calls(chunks)
    expected = [(c["id"], c["name"], c["input"]) for c in calls]
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in received] == expected
    # The official SDK's own accumulator reads the same upstream events the same way.
    assert [(b.id, b.name, b.input) for b in sdk_message(events).content if b.type == "tool_use"] == expected
    assert deltas(chunks, "content") == text
    assert translator.finished
    assert chunks[-1]["choices"][0]["finish_reason"] == ("tool_calls" if calls else "stop")
