"""The latency NeuroAPI adds to a streamed tool call, for each provider, in one run:

    .venv/bin/python -m benchmarks.tool_stream [--requests 200] [--warmup 20]

One fake upstream (``benchmarks.tool_upstream``) answers every request with one tool call
whose ~200 characters of arguments stream in 20 fragments, 0 ms apart, in OpenAI's chunk shape
and in Anthropic's event shape. Four targets get the same tool-calling request (one function
with JSON-schema parameters, ``stream: true``), one request at a time, interleaved round by
round so drift hits them alike:

1. OpenAI direct;  2. NeuroAPI (``neuroapi serve``) → that OpenAI, model gpt-4o-mini;
3. Anthropic direct;  4. NeuroAPI → that Anthropic, model claude-haiku-4-5 (the gateway turns
   content_block_start / input_json_delta events into OpenAI tool-call deltas);
5. NeuroAPI's ``/v1/messages`` → that Anthropic (the caller's body and Anthropic's events pass
   unchanged);  6. NeuroAPI's ``/v1/messages`` → that OpenAI (translated both ways).

Measured from sending the request: the first tool-call delta (an OpenAI chunk whose
``choices[0].delta.tool_calls`` is non-empty; for Anthropic direct, the first
``input_json_delta`` event) and the last byte. Each stream's arguments must reassemble to
exactly what the upstream sent. Prints p50/p99 per target and NeuroAPI's added ms (NeuroAPI's
percentile minus direct's) and ratio against the direct call in the same wire format. With two or more CPUs the gateway runs on
all but the last, the upstream and this client on the last."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from actors.providers.anthropic_api import API_VERSION
from benchmarks.systems import NeuroAPI, System, _pinned, wait_for
from benchmarks.tool_upstream import ANTHROPIC_KEY, ARGUMENTS, FRAGMENTS, OPENAI_KEY, TOOL_NAME
from serve_app.runtime import free_port

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
ANTHROPIC_KEY_VARIABLE = "NEUROAPI_BENCH_ANTHROPIC_KEY"  # systems.NeuroAPI drops ANTHROPIC_API_KEY
MESSAGES = [{"role": "user", "content": "What will the weather be in San Francisco this week?"}]
FUNCTION = {"name": TOOL_NAME, "description": "The weather forecast for a city.", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city", "unit", "days"], "properties": {
        "city": {"type": "string"}, "country": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "include": {"type": "array", "items": {"type": "string"}}, "notes": {"type": "string"}}}}
OPENAI_REQUEST = {"model": OPENAI_MODEL, "messages": MESSAGES, "stream": True,
                  "tools": [{"type": "function", "function": FUNCTION}]}
ANTHROPIC_REQUEST = {"model": ANTHROPIC_MODEL, "max_tokens": 1024, "messages": MESSAGES, "stream": True,
                     "tools": [{"name": FUNCTION["name"], "description": FUNCTION["description"],
                                "input_schema": FUNCTION["parameters"]}]}


def openai_arguments(event: dict) -> str | None:
    """The argument text of a chunk with a tool-call delta, else None."""
    if "error" in event:
        raise RuntimeError(f"error event in the stream: {event['error'].get('message')}")
    calls = event["choices"][0]["delta"].get("tool_calls") if event["choices"] else None
    return "".join(call.get("function", {}).get("arguments", "") for call in calls) if calls else None


def anthropic_arguments(event: dict) -> str | None:
    """The partial JSON of an ``input_json_delta`` event, else None."""
    if event["type"] == "error":
        raise RuntimeError(f"error event in the stream: {event['error']['message']}")
    delta = event.get("delta", {}) if event["type"] == "content_block_delta" else {}
    return delta["partial_json"] if delta.get("type") == "input_json_delta" else None


@dataclass
class Target:
    label: str
    url: str
    headers: dict[str, str]
    request: dict
    arguments_in: Callable[[dict], str | None]
    first_ms: list[float] = field(default_factory=list)
    last_ms: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.body = json.dumps(self.request).encode()

    def call(self, client: httpx.Client) -> tuple[float, float]:
        """(ms to the first tool-call delta, ms to the last byte) of one streamed request."""
        pieces: list[str] = []
        first = None
        start = time.perf_counter()
        with client.stream("POST", self.url, content=self.body, headers=self.headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{self.label}: HTTP {response.status_code} {response.read()[:300]!r}")
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                piece = self.arguments_in(json.loads(line[6:]))
                if piece is not None:
                    first = first or time.perf_counter()
                    pieces.append(piece)
        last = time.perf_counter()
        if first is None or "".join(pieces) != ARGUMENTS:
            raise RuntimeError(f"{self.label}: the tool call's arguments did not arrive whole")
        return (first - start) * 1000, (last - start) * 1000


class ToolUpstream(System):
    name = "tool-upstream"

    def __init__(self, cpus: set[int] | None):
        port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.tool_upstream", "--port", str(port)],
            preexec_fn=_pinned(cpus), start_new_session=True)
        self.root = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root}/v1"  # what systems.NeuroAPI hands the gateway for OpenAI
        wait_for(f"{self.root}/", process=self.process, ready=lambda status: status == 404)


def percentiles(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=100, method="inclusive")[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="measured requests per target")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests per target first")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpus, harness_cpus = (set(cpus[:-1]), {cpus[-1]}) if len(cpus) > 1 else (None, None)
    upstream = ToolUpstream(harness_cpus)
    gateway = None
    try:
        os.environ[ANTHROPIC_KEY_VARIABLE] = ANTHROPIC_KEY
        gateway = NeuroAPI(upstream, gateway_cpus, config={"providers": {"anthropic": {
            "base_url": upstream.root, "credential_env": ANTHROPIC_KEY_VARIABLE}}})
        if harness_cpus:
            os.sched_setaffinity(0, harness_cpus)
        anthropic_headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": API_VERSION}
        messages_url = gateway.url.replace("/v1/chat/completions", "/v1/messages")
        targets = [
            Target("OpenAI direct", f"{upstream.base_url}/chat/completions",
                   {"Authorization": f"Bearer {OPENAI_KEY}"}, OPENAI_REQUEST, openai_arguments),
            Target(f"NeuroAPI → OpenAI ({OPENAI_MODEL})", gateway.url, gateway.headers, OPENAI_REQUEST,
                   openai_arguments),
            Target("Anthropic direct", f"{upstream.root}/v1/messages", anthropic_headers, ANTHROPIC_REQUEST,
                   anthropic_arguments),
            Target(f"NeuroAPI → Anthropic ({ANTHROPIC_MODEL})", gateway.url, gateway.headers,
                   {**OPENAI_REQUEST, "model": ANTHROPIC_MODEL}, openai_arguments),
            Target(f"NeuroAPI /v1/messages → Anthropic ({ANTHROPIC_MODEL})", messages_url, gateway.headers,
                   ANTHROPIC_REQUEST, anthropic_arguments),
            Target(f"NeuroAPI /v1/messages → OpenAI ({OPENAI_MODEL})", messages_url, gateway.headers,
                   {**ANTHROPIC_REQUEST, "model": OPENAI_MODEL}, anthropic_arguments),
        ]
        with httpx.Client(timeout=30) as client:
            for round_ in range(args.warmup + args.requests):
                for target in targets:
                    first, last = target.call(client)
                    if round_ >= args.warmup:
                        target.first_ms.append(first)
                        target.last_ms.append(last)
        print(report(targets, args, gateway))
    finally:
        for system in (gateway, upstream):
            if system is not None:
                system.stop()


def report(targets: list[Target], args: argparse.Namespace, gateway: NeuroAPI) -> str:
    lines = [f"{args.requests} sequential streamed tool calls per target after {args.warmup} warm-up, "
             f"interleaved; one call, {len(ARGUMENTS)}-character arguments in {FRAGMENTS} fragments, "
             f"0 ms gaps; "
             f"{gateway.version()}",
             "| target | first tool-call delta p50 | p99 | last byte p50 | p99 |",
             "|---|---:|---:|---:|---:|"]
    rows = {t.label: (*percentiles(t.first_ms), *percentiles(t.last_ms)) for t in targets}
    pairs = ((targets[0], targets[1]), (targets[2], targets[3]), (targets[2], targets[4]), (targets[0], targets[5]))
    shown: set[str] = set()
    for direct, through in pairs:
        base, ours = rows[direct.label], rows[through.label]
        if direct.label not in shown:
            shown.add(direct.label)
            lines.append(f"| {direct.label} | " + " | ".join(f"{v:.2f} ms" for v in base) + " |")
        lines.append(f"| {through.label} | " + " | ".join(f"{v:.2f} ms" for v in ours) + " |")
        lines.append(f"| **added vs {direct.label}** | " + " | ".join(
            f"**+{o - b:.2f} ms** ({o / b:.1f}×)" for o, b in zip(ours, base)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
