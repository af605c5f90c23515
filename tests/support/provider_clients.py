"""Provider clients pointed at the fake upstreams (``tests.support.upstreams``), and the calls
and stream readers the provider-level tests share. No Ray."""

from __future__ import annotations

import json

from actors.providers import ADAPTERS
from actors.providers.client import ProviderClient
from config.settings import load_settings
from core.backend import StreamStart, UpstreamCall
from core.sse import SSEDecoder
from tests.support.upstreams import CREDENTIALS

MODELS = {"openai": "gpt-4o-mini", "deepseek": "deepseek-chat", "anthropic": "claude-haiku-4-5"}


def client_for(upstreams, provider: str, credential: str | None = None, base_url: str | None = None,
               read_timeout: float | None = None) -> ProviderClient:
    settings = load_settings(environ={f"NEUROAPI_{provider.upper()}_BASE_URL": base_url or upstreams.base_urls()[provider]})
    spec = settings.providers[provider]
    if read_timeout:
        spec = spec.model_copy(update={"read_timeout_s": read_timeout})
    return ProviderClient(ADAPTERS[spec.adapter](spec, credential or CREDENTIALS[provider]))


def call(provider: str, text: str = "hello world", wants_usage: bool = False, **extra) -> UpstreamCall:
    body = {"messages": [{"role": "user", "content": text}], **extra}
    return UpstreamCall("req-test", MODELS[provider], body, wants_usage)


async def collect(client: ProviderClient, upstream_call: UpstreamCall) -> list:
    return [item async for item in client.stream(upstream_call)]


def text_of(items: list) -> str:
    raw = b"".join(i.first if isinstance(i, StreamStart) else i for i in items if isinstance(i, (bytes, StreamStart)))
    chunks = [json.loads(e.data) for e in SSEDecoder().feed(raw)]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
