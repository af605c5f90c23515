"""README's first command, as a new user runs it: `neuroapi serve` with embedded defaults
(its own Ray, its own redis-server under the data directory), then a key from the CLI and a
completion through the official SDK. Slow: it starts a second Ray instance."""

import os
import re
import signal
import subprocess
import sys
import time

import openai
import pytest

from models.engine_choice import engine_kind
from serve_app.runtime import free_port, wait_until_ready
from tests.support.upstreams import CREDENTIALS


@pytest.mark.slow
def test_neuroapi_serve_with_embedded_defaults(tmp_path, fakes):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NEUROAPI_", "RAY_", "OPENAI_", "ANTHROPIC_", "DEEPSEEK_"))}
    env.update({"NEUROAPI_DATA_DIR": str(tmp_path / "data"), "OPENAI_API_KEY": CREDENTIALS["openai"],
                "NEUROAPI_OPENAI_BASE_URL": fakes.base_urls()["openai"]})
    log = open(tmp_path / "serve.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "serve_app.cli", "serve", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", timeout_s=240)
        deadline = time.monotonic() + 240  # the ingress answers while the model still loads
        while "  ready:" not in (banner := (tmp_path / "serve.log").read_text()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "openai     on" in banner
        assert "anthropic  off  (set ANTHROPIC_API_KEY to enable)" in banner
        assert "generated development key material" in banner
        engine = "vllm-cpu" if engine_kind("auto") == "vllm" else "transformers"
        assert re.search(rf"smollm2-135m-instruct +served by {engine}\n", banner), banner[-3000:]

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "serve_app.cli", *args], env=env,
                                  capture_output=True, text=True, timeout=60)

        assert cli("accounts", "create", "new-user@example.com").returncode == 0
        minted = cli("keys", "create", "new-user@example.com")
        assert minted.returncode == 0, minted.stderr
        key = minted.stdout.strip()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Echo: hi "
        stream = client.chat.completions.create(model="fast", stream=True, messages=[{"role": "user", "content": "hi"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: hi "
        private = client.chat.completions.create(model="private", max_tokens=20, temperature=0, messages=[
            {"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in private.choices[0].message.content  # the embedded model, for real
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == 0
    redis_folder = tmp_path / "data" / "redis"
    assert list(redis_folder.glob("appendonly*"))  # the account and key survive a restart
    assert not (redis_folder / "redis.sock").exists() or subprocess.run(
        ["redis-cli", "-s", str(redis_folder / "redis.sock"), "ping"], capture_output=True).returncode != 0
