"""``benchmarks.gpu_check``'s results: the markdown table (engine alone against through NeuroAPI)
and the JSON it is written with."""

from __future__ import annotations

import json
from pathlib import Path


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def device_name(gpu: bool) -> str:
    if not gpu:
        return "CPU"
    import torch

    return torch.cuda.get_device_name(0)  # only after the engines are gone: it starts CUDA here


def table(result: dict) -> str:
    served = f" (through NeuroAPI: {result['gateway_engine']})" if result.get("gateway_engine") else ""
    lines = [f"**{result['device']}** · shape {result['shape']} · vLLM {result['vllm']} · engine "
             f"{result['engine']}{served} · max_tokens {result['max_tokens']}", "",
             "| concurrency | engine alone tok/s | through NeuroAPI tok/s | ratio | TTFT p50 engine "
             "| TTFT p50 NeuroAPI |",
             "|---:|---:|---:|---:|---:|---:|"]
    for concurrency in result["concurrency"]:
        engine = result["engine_alone"].get(str(concurrency))
        gateway = result["gateway"].get(str(concurrency))
        ratio = f"{gateway['tokens_per_s'] / engine['tokens_per_s']:.2f}" if engine and gateway else "—"
        lines.append(
            f"| {concurrency} | {engine['tokens_per_s'] if engine else '—'} "
            f"| {gateway['tokens_per_s'] if gateway else '—'} | {ratio} "
            f"| {fmt_ms(engine['ttft_p50_s']) if engine else '—'} "
            f"| {fmt_ms(gateway['ttft_p50_s']) if gateway else '—'} |")
    startup = result.get("startup") or {}
    if startup:
        lines += ["", "start-up and memory: " + ", ".join(f"{k} {v}" for k, v in startup.items())]
    return "\n".join(lines)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(result) + "\n")
