"""The systems a benchmark run drives: the fake upstream called directly, NeuroAPI (the real
``neuroapi serve`` command: Ray Serve, embedded Redis, a real key) and LiteLLM's proxy (in its
own virtual environment, installed on first use). Each runs as its own process tree, pinned to
the CPUs it is given, and is stopped with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from serve_app.runtime import free_port

HERE = Path(__file__).resolve().parent
LITELLM_VERSION = "1.108.7"  # pinned; never 1.82.7 or 1.82.8 (compromised releases)
UPSTREAM_KEY = "sk-bench-upstream"
MODEL = "gpt-4o-mini"


def _pinned(cpus: set[int] | None):
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def wait_for(url: str, timeout_s: float = 180.0, process: subprocess.Popen | None = None,
             ready=lambda status: status == 200) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before answering on {url}")
        try:
            if ready(httpx.get(url, timeout=2).status_code):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"nothing answered on {url} within {timeout_s:.0f}s")


class System:
    """One thing under load: ``url`` and ``headers`` for chat completions, ``pid`` of its root."""

    name: str
    url: str
    headers: dict[str, str]
    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def version(self) -> str:
        return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever it left behind in its session
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Upstream(System):
    name = "direct"

    def __init__(self, cpus: set[int] | None, latency_ms: float, gap_ms: float):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.upstream", "--port", str(self.port),
             "--latency-ms", str(latency_ms), "--gap-ms", str(gap_ms)],
            preexec_fn=_pinned(cpus), start_new_session=True)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.url = f"{self.base_url}/chat/completions"
        self.headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
        wait_for(f"http://127.0.0.1:{self.port}/", process=self.process, ready=lambda status: status == 404)


class NeuroAPI(System):
    name = "neuroapi"

    def __init__(self, upstream: Upstream, cpus: set[int] | None, metering: bool = True,
                 config: dict | None = None):
        """``config``: an overlay (``NEUROAPI_CONFIG``) for runs that need other settings."""
        self.folder = Path(tempfile.mkdtemp(prefix="neuroapi-bench-"))
        port = free_port()
        self.metering = metering
        self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        self.env = {
            **os.environ, "OPENAI_API_KEY": UPSTREAM_KEY, "NEUROAPI_OPENAI_BASE_URL": upstream.base_url,
            "NEUROAPI_DATA_DIR": str(self.folder), "NEUROAPI_PORT": str(port),
            "NEUROAPI_METRICS_PORT": self.metrics_url.rsplit(":", 1)[1].removesuffix("/metrics"),
            "NEUROAPI_METERING": "1" if metering else "0",
            # The gateway against LiteLLM: no in-house model loads (benchmarks.gpu_check measures those).
            "NEUROAPI_IN_HOUSE_MODELS": "0",
        }
        if not metering:
            self.name = "neuroapi-unmetered"
        for name in ("NEUROAPI_REDIS_URL", "NEUROAPI_CONFIG", "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY", "RAY_ADDRESS"):
            self.env.pop(name, None)
        if config:
            overlay = self.folder / "neuroapi.yaml"
            overlay.write_text(yaml.safe_dump(config))
            self.env["NEUROAPI_CONFIG"] = str(overlay)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serve_app.cli", "serve"], env=self.env, preexec_fn=_pinned(cpus),
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"http://127.0.0.1:{port}/healthz", process=self.process)
        self._cli("accounts", "create", "bench@example.com")
        key = self._cli("keys", "create", "bench@example.com", "--name", "bench")
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {key}"}

    def _cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "serve_app.cli", *args], env=self.env,
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def version(self) -> str:
        from importlib.metadata import version
        return f"neuroapi {version('neuroapi')}, ray {version('ray')}" + ("" if self.metering else ", metering off")

    def batch_sizes(self) -> dict:
        """The metadata batcher's Redis writes so far, from its Prometheus histogram."""
        text = httpx.get(self.metrics_url, timeout=10).text
        values = {}
        for line in text.splitlines():
            if line.startswith("ray_neuroapi_metering_batch_size_") and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                kind = name.split("{")[0].rsplit("_", 1)[1]  # bucket, sum or count
                if kind == "bucket":
                    bound = name.split('le="')[1].split('"')[0]
                    values.setdefault("buckets", {})[bound] = values.get("buckets", {}).get(bound, 0) + float(value)
                else:
                    values[kind] = values.get(kind, 0) + float(value)
        count = values.get("count", 0)
        return {"batches": int(count), "records": int(values.get("sum", 0)),
                "mean": values.get("sum", 0) / count if count else 0, "buckets": values.get("buckets", {})}


class LiteLLM(System):
    name = "litellm"

    def __init__(self, upstream: Upstream, cpus: set[int] | None, workers: int):
        python = self.install()
        folder = Path(tempfile.mkdtemp(prefix="litellm-bench-"))
        master_key = "sk-litellm-bench"
        (folder / "config.yaml").write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {upstream.base_url}\n"
            f"      api_key: {UPSTREAM_KEY}\n"
            "general_settings:\n"
            f"  master_key: {master_key}\n"
            "litellm_settings:\n"
            "  telemetry: false\n")
        port = free_port()
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no fetch from the internet
        self.process = subprocess.Popen(
            [str(python.parent / "litellm"), "--config", "config.yaml", "--host", "127.0.0.1",
             "--port", str(port), "--num_workers", str(workers)],
            cwd=folder, env=env, preexec_fn=_pinned(cpus), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"http://127.0.0.1:{port}/health/liveliness", process=self.process)
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {master_key}"}
        self.workers = workers

    @staticmethod
    def install() -> Path:
        """LiteLLM in its own virtual environment (its dependencies are not ours)."""
        venv = HERE / ".venvs" / f"litellm-{LITELLM_VERSION}"
        python = venv / "bin" / "python"
        if not (venv / "bin" / "litellm").exists():
            print(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
                           check=True)
        return python

    def version(self) -> str:
        return f"litellm {LITELLM_VERSION}, {self.workers} workers"
