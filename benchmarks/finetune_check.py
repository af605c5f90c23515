"""What a fine-tune costs, measured through the real gateway: the time from ``neuroapi finetunes
deploy`` to the first token served by the new version, and the time of a greedy request with
the adapter against the same request to its base model, in one run.

    .venv/bin/python -m benchmarks.finetune_check [--requests 8] [--max-tokens 32]

It serves the embedded default model (converted once into the model cache) with LoRA on, builds a
real PEFT adapter for it (``tests/support/lora.py``) and prints a table."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.gpu_check import MODEL, Gateway, offline
from config.settings import load_settings
from models.model_source import resolve
from tests.support.lora import build_adapter

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def first_token_s(gateway: Gateway, model: str, max_tokens: int) -> float:
    """Seconds until the first content chunk of a streamed greedy answer."""
    started = time.perf_counter()
    body = {"model": model, "messages": PROMPT, "temperature": 0, "max_tokens": max_tokens, "stream": True}
    with httpx.stream("POST", gateway.url, json=body, headers=gateway.headers, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return time.perf_counter() - started
    raise RuntimeError("the answer had no content")


def request_s(gateway: Gateway, model: str, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    response = httpx.post(gateway.url, headers=gateway.headers, timeout=300, json={
        "model": model, "messages": PROMPT, "temperature": 0, "max_tokens": max_tokens})
    response.raise_for_status()
    return time.perf_counter() - started, response.json()["usage"]["completion_tokens"]


def main() -> int:
    offline()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="timed requests each way (after a warm-up)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    settings = load_settings()
    base_folder = resolve(settings.in_house_models["smollm2-135m-instruct"].source, settings.models_dir)
    workdir = Path(tempfile.mkdtemp(prefix="neuroapi-finetune-check-"))
    adapter = build_adapter(base_folder, workdir / "adapter")
    gateway = Gateway(base_folder, workdir, gpu=False, max_lora_rank=16)
    try:
        gateway.ready(600)
        request_s(gateway, MODEL, args.max_tokens)  # warm: the first call pays for lazy set-up
        started = time.perf_counter()
        deploy = subprocess.run([sys.executable, "-m", "serve_app.cli", "finetunes", "deploy", str(adapter),
                                 "--base", MODEL, "--name", "check"], env=gateway.env, capture_output=True, text=True)
        if deploy.returncode:
            raise RuntimeError(deploy.stderr[-2000:])
        deployed_s = time.perf_counter() - started
        to_first_token_s = deployed_s + first_token_s(gateway, "ft:check", args.max_tokens)
        timings: dict[str, list[float]] = {MODEL: [], "ft:check": []}
        for _ in range(args.requests):  # interleaved, so drift hits both alike
            for model in timings:
                seconds, tokens = request_s(gateway, model, args.max_tokens)
                timings[model].append(seconds / max(tokens, 1))
    finally:
        gateway.stop()
    base, tuned = statistics.median(timings[MODEL]), statistics.median(timings["ft:check"])
    print("| measure | value |\n|---|---|")
    print(f"| `finetunes deploy` (validate, copy, register, live) | {deployed_s:.2f} s |")
    print(f"| deploy start → first token of ft:check | {to_first_token_s:.2f} s |")
    print(f"| greedy request, ms per completion token: base / with adapter | {base * 1000:.1f} / {tuned * 1000:.1f} |")
    print(f"| adapter / base | {tuned / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
