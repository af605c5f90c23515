"""The whole HTTP API of one ingress replica, in process and without Ray: the plain ``Gateway``
over the plain deployment classes (verifier, router, provider proxies, batcher) through local
handles, real Redis, fake upstreams on loopback. What a caller sees must match the Serve app."""

from __future__ import annotations

import json

import httpx
import pytest

from actors.keys.verifier import KeyVerifier
from actors.metering.batcher_deployment import MetadataBatcher
from actors.providers.proxy import ProviderProxy
from actors.routing.router import ModeRouter
from config.settings import load_settings
from core.naming import provider_deployment
from serve_app.api import build_api
from serve_app.gateway import Gateway
from tests.conftest import key_material_environment
from tests.support.local_handle import LocalHandle
from tests.support.upstreams import CREDENTIALS


class ProxyBackends:
    """``Backends`` over the plain provider proxies, by deployment name."""

    def __init__(self, proxies: dict[str, ProviderProxy]):
        self._proxies = proxies

    async def complete(self, backend, call):
        return await self._proxies[backend.deployment].complete(call)

    def stream(self, backend, call):
        return self._proxies[backend.deployment].stream(call)


@pytest.fixture
async def client(own_redis, redis, upstreams, monkeypatch, tmp_path):  # ``redis``: flushed first
    environ = {**key_material_environment(), "NEUROAPI_DATA_DIR": str(tmp_path), "NEUROAPI_PASSWORD_ROUNDS": "4",
               "NEUROAPI_IN_HOUSE_MODELS": "0",
               **{f"NEUROAPI_{name.upper()}_BASE_URL": url for name, url in upstreams.base_urls().items()}}
    for name, credential in CREDENTIALS.items():
        environ[f"{name.upper()}_API_KEY"] = credential
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    enabled = settings.enabled_providers()
    proxies = {provider_deployment(name): ProviderProxy(name, settings.providers[name], settings.prices,
                                                        settings.max_response_bytes) for name in enabled}
    batcher = MetadataBatcher(settings, own_redis.url)
    verifier = KeyVerifier(settings, own_redis.url)
    gateway = await Gateway(settings, own_redis.url, LocalHandle(verifier),
                            LocalHandle(ModeRouter(settings, enabled, own_redis.url)), ProxyBackends(proxies),
                            LocalHandle(batcher)).start()
    transport = httpx.ASGITransport(app=build_api(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http
    await gateway.close()
    await batcher.close()
    await verifier.close()
    for proxy in proxies.values():
        await proxy.close()


async def api_key(client: httpx.AsyncClient) -> str:
    credentials = {"email": "dev@example.com", "password": "correct horse battery staple"}
    assert (await client.post("/v1/auth/signup", json=credentials)).status_code == 201
    token = (await client.post("/v1/auth/login", json=credentials)).json()["token"]
    created = await client.post("/v1/keys", json={"name": "laptop"}, headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 201
    return created.json()["key"]


async def test_sign_up_mint_a_key_and_chat_without_ray(client):
    key = await api_key(client)
    answer = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                               json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "chat.completion" and body["usage"]["total_tokens"] > 0
    assert answer.headers["X-NeuroAPI-Cost-Units"] == json.dumps(body["usage"]["cost_units"])
    assert answer.headers["Server-Timing"].startswith("gateway;dur=")


async def test_a_stream_ends_with_done(client):
    key = await api_key(client)
    answer = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                               json={"model": "gpt-4o-mini", "stream": True,
                                     "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.text.endswith("data: [DONE]\n\n")


async def test_errors_keep_the_openai_shape(client):
    missing = await client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    unknown = await client.get("/v1/nowhere")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    key = await api_key(client)
    bad = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"


async def test_models_lists_what_the_key_may_use(client):
    key = await api_key(client)
    listing = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert listing.status_code == 200
    assert "gpt-4o-mini" in {m["id"] for m in listing.json()["data"]}


async def test_with_billing_off_the_billing_endpoints_say_so_and_calls_are_not_gated(client):
    credentials = {"email": "off@example.com", "password": "correct horse battery staple"}
    await client.post("/v1/auth/signup", json=credentials)
    token = (await client.post("/v1/auth/login", json=credentials)).json()["token"]
    overview = await client.get("/v1/billing", headers={"Authorization": f"Bearer {token}"})
    assert overview.status_code == 200 and overview.json()["enabled"] is False
    checkout = await client.post("/v1/billing/checkout", headers={"Authorization": f"Bearer {token}"})
    assert checkout.status_code == 404 and checkout.json()["error"]["code"] == "billing_disabled"
