"""Shared fixtures: a real redis-server of our own, fake upstream providers on loopback, and
one real Ray Serve gateway per test session (started only if a test asks for it)."""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from serve_app.runtime import free_port
from tests.support.redis_servers import RedisServer, start_redis
from tests.support.stripe_server import METERED_PRICE, SECRET_KEY, FakeStripe
from tests.support.upstreams import CREDENTIALS, FakeUpstreams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[FakeStripe]:
    """A Stripe-compatible server on loopback (tests/support/stripe_server.py) for the session."""
    server = FakeStripe().start()
    yield server
    server.stop()


STRIPE_WEBHOOK_SECRET = "whsec_neuroapiTestWebhookSecret0123"
FREE_COST_UNITS = 1_000_000_000  # no test account reaches it unless a test pushes it there


@pytest.fixture(scope="session")
def fakes() -> Iterator[FakeUpstreams]:
    upstreams = FakeUpstreams().start()
    yield upstreams
    upstreams.stop()


@pytest.fixture
def upstreams(fakes: FakeUpstreams) -> FakeUpstreams:
    """The shared fakes, with a clean record and no scripted failures left over."""
    fakes.reset()
    return fakes


def key_material_environment() -> dict[str, str]:
    pepper = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return {
        "NEUROAPI_PEPPERS": f"1:{pepper}",
        "NEUROAPI_ENVELOPE_KEYS": f"1:{Fernet.generate_key().decode()}",
    }


def write_secrets_file(path: Path) -> dict[str, str]:
    """Key material in a secrets file (the format config.secrets reads, mode 0600), so that
    `neuroapi secrets rotate-*` can add versions the running gateway reloads; its environment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "peppers": {"1": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()},
        "envelope_keys": {"1": Fernet.generate_key().decode()},
    }
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        json.dump(content, handle)
    return {"NEUROAPI_SECRETS_FILE": str(path)}


TIGHT_MODEL = "smollm2-transformers"
FAULTY_MODEL = "faulty-gpt"


def gateway_config(fakes: FakeUpstreams, closed_port: int) -> dict:
    """Test catalog additions: a provider that refuses connections, and modes to exercise
    fallback deterministically (weight 0 = fallback only)."""
    return {
        # Revocation must hold across replicas: at least two of each key-holding deployment.
        "ingress_replicas": 2,
        "verifier_replicas": 2,
        "password_rounds": 4,  # bcrypt's minimum: the tests log in often
        # Longer than test_redis_outage's outage, short enough that after a replica is killed
        # (test_record_durability) a revoke waiting for its lease stays within a client's timeout.
        "cache_outage_serve_s": 20,
        # The billing reporter's own pass would race the tests that drive passes themselves
        # (test_billing.py); they run it explicitly, in process or with `neuroapi billing report`.
        "billing_report_every_s": 3600,
        # The tests play the edge load balancer: loopback's X-Forwarded-For is believed.
        "trusted_proxies": ["127.0.0.1/32", "::1/128"],
        # Small edge bounds for callers from other loopback addresses (tests/integration/test_edge.py).
        "client_request_timeout_s": 5,
        "client_body_timeout_s": 5,  # test_fuzz_gateway trickles a body
        "max_connections_per_source": 20,
        "providers": {
            "unreachable": {
                "adapter": "openai",
                "base_url": f"http://127.0.0.1:{closed_port}/v1",
                "credential_env": "OPENAI_API_KEY",
                "models": ["dead-model"],
                "connect_timeout_s": 2,
            },
            # The fake OpenAI API under other model names, with bounds small enough to test
            # (tests/integration/test_upstream_faults.py scripts its failures).
            "faulty": {
                "adapter": "openai",
                "base_url": fakes.base_urls()["openai"],
                "credential_env": "OPENAI_API_KEY",
                "models": [FAULTY_MODEL],
                "first_byte_timeout_s": 1,
                "stream_idle_timeout_s": 1,
            },
        },
        # The real default model on vLLM (CPU here), and the same weights on the transformers
        # engine with room for one call and one waiting: the back-pressure tests fill it.
        "in_house_models": {
            "smollm2-135m-instruct": {"max_model_len": 2048, "max_concurrency": 4, "max_queued": 16},
            TIGHT_MODEL: {"source": "builtin:smollm2-135m-instruct", "engine": "transformers",
                          "max_model_len": 2048, "max_concurrency": 1, "max_queued": 1, "num_cpus": 0},
        },
        "prices": {"dead-model": {"input": 1, "output": 1}, TIGHT_MODEL: {"input": 10000, "output": 10000},
                   FAULTY_MODEL: {"input": 1, "output": 1}},
        "modes": {
            "resilient": {"candidates": [{"model": "dead-model", "weight": 1},
                                         {"model": "gpt-4o-mini", "weight": 0}]},
            "cross-provider": {"candidates": [{"model": "deepseek-chat", "weight": 1},
                                              {"model": "claude-haiku-4-5", "weight": 0}]},
            "faulty-first": {"candidates": [{"model": FAULTY_MODEL, "weight": 1},
                                            {"model": "gpt-4o-mini", "weight": 0}]},
            # A fine-tune first, its base model while it is not deployed (tests/integration/test_finetunes.py).
            "support": {"candidates": [{"model": "ft:mode-support", "weight": 1},
                                       {"model": "smollm2-135m-instruct", "weight": 0}]},
        },
    }


@dataclass
class Gateway:
    url: str
    redis: RedisServer
    environ: dict[str, str]
    data_dir: Path
    config_path: Path


@pytest.fixture(scope="session")
def gateway(
    redis_server: RedisServer, fakes: FakeUpstreams, stripe_server: FakeStripe,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """One real Ray Serve deployment of the whole application for the session."""
    folder = tmp_path_factory.mktemp("gateway")
    config_path = folder / "neuroapi.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(fakes, free_port())))
    environ = {
        "NEUROAPI_REDIS_URL": redis_server.url,
        "NEUROAPI_DATA_DIR": str(folder / "data"),
        "NEUROAPI_PORT": str(free_port()),
        "OPENAI_API_KEY": CREDENTIALS["openai"],
        "ANTHROPIC_API_KEY": CREDENTIALS["anthropic"],
        "DEEPSEEK_API_KEY": CREDENTIALS["deepseek"],
        "NEUROAPI_ADMIN_TOKEN": "admin-" + secrets.token_hex(16),
        # Billing on, against the local Stripe-compatible server.
        "NEUROAPI_STRIPE_SECRET_KEY": SECRET_KEY,
        "NEUROAPI_STRIPE_API_BASE": stripe_server.url,
        "NEUROAPI_STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "NEUROAPI_STRIPE_PRICE": METERED_PRICE,
        "NEUROAPI_BILLING_FREE_COST_UNITS": str(FREE_COST_UNITS),
        **{f"NEUROAPI_{name.upper()}_BASE_URL": url for name, url in fakes.base_urls().items()},
        **write_secrets_file(folder / "data" / "secrets.json"),
        # Serve buffers replica log lines in memory (1000 with throughput-optimised mode) and
        # drops them if the replica is killed; unbuffered, every line is on disk at once, so
        # tests that scan the logs see everything the gateway logged.
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
        # Ray's metrics agent exports every second instead of every ten.
        "RAY_metrics_report_interval_ms": "1000",
    }
    for name in ("NEUROAPI_PEPPERS", "NEUROAPI_ENVELOPE_KEYS"):
        os.environ.pop(name, None)  # they would win over the secrets file
    os.environ.update(environ)  # Ray's workers inherit the driver's environment
    from config.settings import load_settings
    from serve_app import runtime

    settings = load_settings(config_path)
    url = runtime.start_gateway(settings, redis_server.url, num_cpus=2)
    yield Gateway(url, redis_server, environ, folder / "data", config_path)
    runtime.stop_gateway()


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The embedded default model's folder, converted once into the model cache, as ``neuroapi
    serve`` does (so a second run, and the gateway fixture, reuse it)."""
    from config.settings import load_settings
    from models.model_source import ModelSourceError, resolve

    try:
        return resolve("builtin:smollm2-135m-instruct", load_settings(environ=os.environ).models_dir, progress=False)
    except ModelSourceError as error:
        pytest.skip(f"the built-in model is not available: {error}")


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_model):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(embedded_model, local_files_only=True)
