"""Reading an SSE body whose events are named (Anthropic's stream, NeuroAPI's /v1/generate)."""

from __future__ import annotations

import json
from decimal import Decimal


def named_events(text: str) -> list[tuple[str, dict]]:
    """(event type, data) of each event, numbers as ``Decimal`` (cost_units stay exact)."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"], parse_float=Decimal)))
    return out
