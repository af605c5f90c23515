"""Tokens per second of an in-house model through NeuroAPI against the same vLLM engine alone.

Builds a random-weight Llama model of a realistic shape locally (never downloads: the tokenizer
is the embedded SmolLM2's), runs it in vLLM in this process at 1, 8 and 64 concurrent streams,
frees the engine, then serves the same folder through the real gateway (``neuroapi serve``:
Ray Serve, a real key, streamed chat completions with usage) and repeats the load. Prints a
markdown table (engine tokens/s, gateway tokens/s, their ratio, median time to first token)
and writes it as JSON. Every request asks for ``--max-tokens`` at temperature 1 with its own
seed; the rate counts the completion tokens each stream reports, so an early stop (random
weights rarely pick the end-of-sequence token) does not distort it. On a GPU machine:

    scripts/gpu_check.sh            # = .venv/bin/python -m benchmarks.gpu_check (1b shape on a GPU)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from benchmarks.gpu_check_load import Level, Sample, messages, run_levels
from benchmarks.gpu_check_model import SHAPES, build_model
from benchmarks.gpu_check_report import device_name, table, write
from benchmarks.systems import System, wait_for
from serve_app.runtime import free_port

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "gpu-check-model"
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 64
GPU_MEMORY_UTILIZATION = 0.85


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def offline() -> None:
    """No hub, no telemetry: for this process and everything it starts."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK"):
        os.environ[name] = "1"


# ---- the engine alone ---------------------------------------------------------------------


async def engine_alone(folder: Path, args: argparse.Namespace) -> tuple[str, dict[int, Level]]:
    from transformers import AutoTokenizer

    from models.engine import EngineOptions, Sampling
    from models.openai_format import prompt_token_ids
    from models.vllm_engine import VLLMEngine

    tokenizer = AutoTokenizer.from_pretrained(folder)
    engine = VLLMEngine(EngineOptions(
        model_path=folder, max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS, dtype="auto",
        gpu_memory_utilization=GPU_MEMORY_UTILIZATION, cpu_kv_cache_gib=args.cpu_kv_cache_gib))
    started = time.perf_counter()
    await engine.start()
    print(f"engine: {engine.name} started in {time.perf_counter() - started:.0f}s", flush=True)

    async def one(index: int) -> Sample:
        ids = prompt_token_ids(tokenizer, messages(index))
        sampling = Sampling(max_tokens=args.max_tokens, temperature=1.0, seed=index)
        sent, ttft, tokens = time.perf_counter(), None, 0
        async for delta in engine.generate(f"gpu-check-{index}", ids, sampling):
            if ttft is None and delta.completion_tokens:
                ttft = time.perf_counter() - sent
            tokens = delta.completion_tokens
        return Sample(tokens, ttft)

    try:
        return engine.name, await run_levels(one, "engine", args)
    finally:
        await engine.shutdown()


def wait_for_free_gpu(timeout_s: float = 120.0) -> None:
    """Until the engine's process has let go of the GPU (nvidia-smi's view; no CUDA in this process)."""
    if shutil.which("nvidia-smi") is None:
        time.sleep(5)
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True)
        rows = [[float(v) for v in line.split(",")] for line in done.stdout.strip().splitlines() if line.strip()]
        if done.returncode == 0 and rows and all(used < 0.1 * total for used, total in rows):
            return
        time.sleep(2)
    print("warning: the GPU still holds memory after the engine stopped", flush=True)


# ---- through the gateway ------------------------------------------------------------------


def gateway_config(folder: Path, path: Path, gpu: bool, max_lora_rank: int = 0) -> None:
    """The catalog: only our model (the default SmolLM2 and the mode that uses it are removed)."""
    spec = {"source": str(folder), "engine": "vllm", "max_model_len": MAX_MODEL_LEN, "max_concurrency": MAX_NUM_SEQS,
            "max_queued": 256, "num_gpus": 1 if gpu else 0, "num_cpus": 0 if gpu else 1,
            "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
            # 0 as for the engine alone: the comparison is of the gateway, not of LoRA.
            "max_lora_rank": max_lora_rank}
    catalog = {"in_house_models": {"smollm2-135m-instruct": None, MODEL: spec},
               "modes": {"private": None},
               "prices": {MODEL: {"input": 0, "output": 0}}}
    path.write_text(json.dumps(catalog, indent=2))  # JSON is YAML


class Gateway(System):
    """``neuroapi serve`` with the model, in its own session; ``stop()`` ends the whole group."""

    name = "neuroapi"

    def __init__(self, folder: Path, workdir: Path, gpu: bool, max_lora_rank: int = 0):
        data = workdir / "gateway-data"  # fresh each run: its Redis holds the account and key
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        config = workdir / "gateway.yaml"
        gateway_config(folder, config, gpu, max_lora_rank)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "NEUROAPI_CONFIG": str(config), "NEUROAPI_DATA_DIR": str(data),
                    "NEUROAPI_PORT": str(self.port), "NEUROAPI_IN_HOUSE_MODELS": "1"}
        for name in ("NEUROAPI_REDIS_URL", "NEUROAPI_METRICS_PORT", "RAY_ADDRESS", "OPENAI_API_KEY",
                     "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY"):
            self.env.pop(name, None)
        self.log = workdir / "gateway.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "serve_app.cli", "serve"], env=self.env,
                                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"{self.base}/v1/chat/completions"
        self.headers: dict[str, str] = {}

    def _cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "serve_app.cli", *args], env=self.env,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"neuroapi {' '.join(args[:2])} failed: {done.stderr[-1000:]}")
        return done.stdout.strip()

    def ready(self, timeout_s: float) -> dict:
        """Up, a key made, and ``MODEL`` listed; returns its /v1/models entry."""
        deadline = time.monotonic() + timeout_s
        wait_for(f"{self.base}/healthz", timeout_s=timeout_s, process=self.process)
        self._cli("accounts", "create", "gpu-check@example.com")
        key = self._cli("keys", "create", "gpu-check@example.com", "--name", "gpu-check")
        self.headers = {"Authorization": f"Bearer {key}"}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}")
            try:
                listing = httpx.get(f"{self.base}/v1/models", headers=self.headers, timeout=10).json()
                entry = next((m for m in listing.get("data", []) if m.get("id") == MODEL), None)
                if entry is not None:
                    return entry
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"{MODEL} was not listed on {self.base}/v1/models within {timeout_s:.0f}s")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class GatewayStreams:
    """Streamed chat completions through the gateway; tokens from the final usage chunk."""

    def __init__(self, gateway: Gateway, max_tokens: int):
        import aiohttp

        self.gateway = gateway
        self.max_tokens = max_tokens
        self.fingerprints: set[str] = set()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600))

    async def close(self) -> None:
        await self.session.close()

    async def one(self, index: int) -> Sample:
        body = {"model": MODEL, "messages": messages(index), "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": self.max_tokens,
                "temperature": 1.0, "seed": index}
        sent, ttft, usage = time.perf_counter(), None, None
        async with self.session.post(self.gateway.url, json=body, headers=self.gateway.headers) as response:
            if response.status != 200:
                raise GatewayFailure(response.status, (await response.text())[:500])
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("system_fingerprint"):
                    self.fingerprints.add(chunk["system_fingerprint"])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                choices = chunk.get("choices") or []
                if ttft is None and choices and (choices[0].get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - sent
        if usage is None:
            raise GatewayFailure(200, "the stream ended without a usage chunk (stream_options.include_usage)")
        return Sample(int(usage["completion_tokens"]), ttft)

    async def warm_up(self, timeout_s: float) -> None:
        """The first answer (retried while the model's replica is still coming up)."""
        import aiohttp

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.one(10_000_000)
                return
            except (GatewayFailure, aiohttp.ClientError) as failure:
                status = failure.status if isinstance(failure, GatewayFailure) else 0
                if time.monotonic() > deadline or status not in (0, 404, 500, 502, 503, 504):
                    raise
                print(f"gateway: not answering yet ({type(failure).__name__}: {failure}); retrying", flush=True)
                await asyncio.sleep(5)


class GatewayFailure(RuntimeError):
    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


async def through_gateway(gateway: Gateway, args: argparse.Namespace,
                          on_first_answer=lambda: None) -> tuple[str, dict[int, Level]]:
    streams = GatewayStreams(gateway, args.max_tokens)
    try:
        await streams.warm_up(args.start_timeout)
        on_first_answer()
        levels = await run_levels(streams.one, "gateway", args)
        return ",".join(sorted(streams.fingerprints)) or "?", levels
    finally:
        await streams.close()


def gateway_run(folder: Path, workdir: Path, args: argparse.Namespace, gpu: bool,
                startup: dict[str, float]) -> tuple[str, dict[int, Level]]:
    """Also notes in ``startup`` how long the gateway took to serve, and its memory after the run."""
    started = time.perf_counter()
    gateway = Gateway(folder, workdir, gpu)
    try:
        entry = gateway.ready(args.start_timeout)
        engine = f" on {entry['engine']}" if entry.get("engine") else ""
        print(f"gateway: {MODEL}{engine} listed on {gateway.base} after {time.perf_counter() - started:.0f}s "
              f"(log: {gateway.log})", flush=True)

        def first_answer() -> None:  # the model loaded and answered: what a user waits for
            startup["gateway_start_to_first_answer_s"] = round(time.perf_counter() - started, 1)

        fingerprint_and_levels = asyncio.run(through_gateway(gateway, args, first_answer))
        try:
            from benchmarks.processes import measure

            rss, uss, _ = measure(gateway.process.pid)
            startup["gateway_rss_mb"], startup["gateway_uss_mb"] = rss >> 20, uss >> 20
        except ImportError:  # psutil comes with the bench extra
            pass
        return fingerprint_and_levels
    except BaseException as error:
        with contextlib.suppress(subprocess.TimeoutExpired):  # a dying gateway answers 500 a while
            gateway.process.wait(timeout=10)
        print(f"gateway log ({gateway.log}), last lines:\n{gateway.log_tail()}", file=sys.stderr, flush=True)
        if isinstance(error, Exception) and gateway.process.poll() is not None:
            raise RuntimeError(f"the gateway process exited with {gateway.process.returncode} "
                               f"(then: {type(error).__name__}: {error})") from error
        raise
    finally:
        gateway.stop()


# ---- main ---------------------------------------------------------------------------------


def arguments(gpu: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b" if gpu else "tiny")
    parser.add_argument("--concurrency", type=lambda text: [int(c) for c in text.split(",")], default=[1, 8, 64],
                        help="comma-separated numbers of concurrent streams (at most 64)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream (at least 3 at concurrency 1)")
    parser.add_argument("--workdir", type=Path, help="model folder, gateway data and logs (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="JSON results (default: benchmarks/results/gpu_check.json on "
                                                 "a GPU, <workdir>/gpu_check.json on a CPU)")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds for the gateway to serve")
    parser.add_argument("--cpu-kv-cache-gib", type=float, default=1.0, help="KV cache of the CPU engine alone")
    parser.add_argument("--model-folder", type=Path,
                        help="serve this model folder instead of building a random-weight one "
                             "(e.g. the embedded default in ~/.cache/neuroapi/models/smollm2-135m-instruct)")
    parser.add_argument("--skip-engine", action="store_true", help="only through the gateway")
    parser.add_argument("--skip-gateway", action="store_true", help="only the engine alone")
    args = parser.parse_args()
    if max(args.concurrency) > MAX_NUM_SEQS or min(args.concurrency) < 1:
        parser.error(f"--concurrency: each between 1 and {MAX_NUM_SEQS}")
    return args


def main() -> int:
    offline()
    # A timeout's SIGTERM unwinds like Ctrl-C, so the engine and the gateway are still stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    gpu = has_cuda()
    args = arguments(gpu)
    import vllm

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="neuroapi-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = args.out or (RESULTS / "gpu_check.json" if gpu else workdir / "gpu_check.json")
    shape_config = SHAPES[args.shape] if args.model_folder is None else json.loads(
        (args.model_folder / "config.json").read_text())
    folder = args.model_folder or build_model(args.shape, workdir / f"model-{args.shape}")
    if args.model_folder:
        args.shape = args.model_folder.name
    result: dict[str, Any] = {
        "shape": args.shape, "shape_config": shape_config, "vllm": vllm.__version__,
        "engine": "vllm-gpu" if gpu else "vllm-cpu", "max_tokens": args.max_tokens, "rounds": args.rounds,
        "concurrency": args.concurrency, "max_model_len": MAX_MODEL_LEN, "engine_alone": {}, "gateway": {},
        "startup": {},
    }
    failed = False
    if not args.skip_engine:
        try:
            result["engine"], levels = asyncio.run(engine_alone(folder, args))
            result["engine_alone"] = {str(c): asdict(level) for c, level in levels.items()}
        except Exception as error:  # still try the gateway
            failed = True
            result["engine_error"] = f"{type(error).__name__}: {error}"
            print(f"engine run failed: {result['engine_error']}", file=sys.stderr, flush=True)
        if gpu:
            wait_for_free_gpu()
    if not args.skip_gateway:
        try:
            fingerprint, levels = gateway_run(folder, workdir, args, gpu, result["startup"])
            result["gateway"] = {str(c): asdict(level) for c, level in levels.items()}
            result["gateway_engine"] = fingerprint
        except Exception as error:  # still report the engine's numbers
            failed = True
            result["gateway_error"] = f"{type(error).__name__}: {error}"
            print(f"gateway run failed: {result['gateway_error']}", file=sys.stderr, flush=True)
    result["device"] = device_name(gpu)
    write(result, out)
    print("\n" + table(result) + f"\n\nresults: {out} (and {out.with_suffix('.md').name})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
