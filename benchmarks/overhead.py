"""What NeuroAPI adds to a call: the same closed-loop load against the fake upstream directly
and through the gateway, in one run, printed as one table.

    .venv/bin/python -m benchmarks.overhead [--quick]

Starts: a fast fake OpenAI upstream (own process), a redis-server, the gateway on Ray Serve
(this process is the idle Ray driver), and the load generator (own process, so its CPU is not
the gateway's). Everything is on loopback."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.load import closed_loop, summary
from serve_app.runtime import free_port

SCENARIOS = [
    # name, stream, concurrency, requests
    ("non-stream, sequential", False, 1, 1000),
    ("non-stream, 16 concurrent", False, 16, 3200),
    ("64-chunk stream, sequential", True, 1, 40),
    ("64-chunk stream, 16 concurrent", True, 16, 160),
]


def _measure(targets: dict[str, tuple[str, dict]], scale: float, queue) -> None:
    async def run() -> list:
        rows = []
        for name, stream, concurrency, requests in SCENARIOS:
            n = max(concurrency, int(requests * scale))
            for target, (url, headers) in targets.items():
                samples = await closed_loop(url, headers, stream=stream, requests=n, concurrency=concurrency)
                rows.append((name, target, summary(samples)))
        return rows
    queue.put(asyncio.run(run()))


def _wait_for(url: str) -> None:
    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the requests")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    folder = Path(tempfile.mkdtemp(prefix="neuroapi-bench-"))
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.upstream", "--port", str(upstream_port)])
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                              "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        _wait_for(f"http://127.0.0.1:{upstream_port}/")
        os.environ.update({
            "OPENAI_API_KEY": "sk-bench", "NEUROAPI_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
            "NEUROAPI_DATA_DIR": str(folder), "NEUROAPI_PORT": str(free_port()),
        })
        from config.secrets import load_key_material
        from config.settings import load_settings
        from serve_app import runtime

        settings = load_settings()
        load_key_material(settings, create=True)
        gateway = runtime.start_gateway(settings, redis_url)
        cli_env = {**os.environ, "NEUROAPI_REDIS_URL": redis_url}
        subprocess.run([sys.executable, "-m", "serve_app.cli", "accounts", "create", "bench@example.com"],
                       env=cli_env, check=True, capture_output=True)
        key = subprocess.run([sys.executable, "-m", "serve_app.cli", "keys", "create", "bench@example.com"],
                             env=cli_env, check=True, capture_output=True, text=True).stdout.strip()
        targets = {
            "direct": (f"http://127.0.0.1:{upstream_port}/v1/chat/completions", {"Authorization": "Bearer sk-bench"}),
            "neuroapi": (f"{gateway}/v1/chat/completions", {"Authorization": f"Bearer {key}"}),
        }
        queue = multiprocessing.get_context("spawn").Queue()
        loader = multiprocessing.get_context("spawn").Process(target=_measure, args=(targets, scale, queue))
        loader.start()
        rows = queue.get()
        loader.join()
        print_table(rows)
    finally:
        upstream.terminate()
        redis.terminate()
        from serve_app import runtime
        runtime.stop_gateway()


def print_table(rows: list) -> None:
    by_scenario: dict[str, dict[str, dict]] = {}
    for name, target, stats in rows:
        by_scenario.setdefault(name, {})[target] = stats
    print("\n| scenario | metric | direct p50 / p99 | NeuroAPI p50 / p99 | added p50 / p99 | req/s direct / NeuroAPI | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, stats in by_scenario.items():
        direct, gateway = stats["direct"], stats["neuroapi"]
        metrics = [("TTFT ms" if "stream" in name and "non" not in name else "latency ms", "p50", "p99")]
        if "non" not in name:
            metrics.append(("chunk gap ms", "gap_p50", "gap_p99"))
        for label, p50, p99 in metrics:
            print(f"| {name} | {label} | {direct[p50]:.2f} / {direct[p99]:.2f} | {gateway[p50]:.2f} / {gateway[p99]:.2f} "
                  f"| {gateway[p50] - direct[p50]:.2f} / {gateway[p99] - direct[p99]:.2f} "
                  f"| {direct['per_s']:.0f} / {gateway['per_s']:.0f} | {gateway['errors']} |")


if __name__ == "__main__":
    main()
