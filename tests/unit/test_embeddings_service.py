"""``EmbeddingService`` driven directly (no HTTP, no Ray) over the real OpenAI provider client on the
fake upstream: every call leaves exactly one record, priced once (the answer's usage.cost_units and
the record agree), refusals are metered too, and a backend that never answers cannot hold the
caller past the deadline."""

from __future__ import annotations

import asyncio
import json

import pytest

from actors.keys.store import VerifiedKey
from actors.metering.call_meter import CallMeter
from actors.providers import ADAPTERS
from actors.providers.client import ProviderClient
from actors.routing.table import build_routing_table
from config.settings import load_settings
from core.errors import invalid_api_key
from core.scope import UNRESTRICTED, Scope
from serve_app.endpoints.embeddings.service import EmbeddingService
from tests.support.upstreams import CREDENTIALS

KEY = VerifiedKey(prefix="neuro_abcd1234", account_id="acct_1", scope=UNRESTRICTED)


class ProviderEmbeddings:
    """``EmbeddingBackends`` over the real OpenAI client; ``hang`` makes it never answer."""

    def __init__(self, upstreams, settings):
        spec = settings.providers["openai"]
        self._client = ProviderClient(ADAPTERS["openai"](spec, CREDENTIALS["openai"]), settings.prices)
        self.hang = False

    async def embed(self, backend, call):
        if self.hang:
            await asyncio.sleep(3600)
        return await self._client.embed(call)


@pytest.fixture
def setup(upstreams):
    settings = load_settings(environ={"NEUROAPI_OPENAI_BASE_URL": upstreams.base_urls()["openai"]})
    records, backends = [], ProviderEmbeddings(upstreams, settings)
    table = build_routing_table(settings, ["openai"])
    service = EmbeddingService(table, backends, records.append, settings.prices, settings.card, deadline_s=30.0)
    return service, records, backends


async def answer(service, body: dict, key=KEY):
    async def authenticate():
        if key is None:
            raise invalid_api_key()
        return key

    async def read_body() -> bytes:
        return json.dumps(body).encode()

    return await service.answer(CallMeter.start("req-1", None, "/v1/embeddings"), authenticate, read_body)


async def test_one_record_per_call_priced_once_for_answer_and_bill(setup):
    service, records, _ = setup
    result = await answer(service, {"model": "text-embedding-3-small", "input": ["one two three", "four"]})
    body = json.loads(result.body)
    assert [len(d["embedding"]) for d in body["data"]] == [1536, 1536]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4, "cost_units": 0.08}  # 4 x 20000 micro
    assert result.cost_units == "0.08"
    [record] = records
    assert (record.status, record.backend, record.model, record.mode) == (200, "openai", "text-embedding-3-small", "")
    assert (record.prompt_tokens, record.completion_tokens, record.estimated) == (4, 0, False)
    assert record.cost_micro_units == 80000 and record.response_bytes == len(result.body)
    assert (record.key_prefix, record.endpoint) == ("neuro_abcd1234", "/v1/embeddings")


@pytest.mark.parametrize("body, key, status, code", [
    ({"model": "text-embedding-3-small", "input": "x"}, None, 401, "invalid_api_key"),
    ({"model": "text-embedding-3-small", "input": ""}, KEY, 400, "invalid_value"),
    ({"model": "gpt-4o-mini", "input": "x"}, KEY, 400, "model_not_embedding"),
    ({"model": "text-embedding-3-small", "input": "x"}, VerifiedKey(prefix="neuro_scoped12", account_id="a",
                                                                         scope=Scope(in_house_only=True)), 403,
     "scope_forbids"),
    ({"model": "text-embedding-3-small", "input": "word " * 8193}, KEY, 400, "upstream_rejected"),  # OpenAI's 400
])
async def test_refusals_are_answered_and_metered_and_nothing_forbidden_is_sent(setup, upstreams, body, key, status,
                                                                               code):
    service, records, _ = setup
    with pytest.raises(Exception) as refused:
        await answer(service, body, key)
    assert (refused.value.status, refused.value.code) == (status, code)
    [record] = records
    assert (record.status, record.cost_micro_units, record.response_bytes) == (status, 0, len(refused.value.rendered()))
    if status != 400 or code != "upstream_rejected":
        assert upstreams.requests == []  # refused in the gateway, before any provider saw it


async def test_a_backend_that_never_answers_is_a_504_at_the_deadline(setup, monkeypatch):
    from serve_app.endpoints.chat import fallback

    service, records, backends = setup
    backends.hang = True
    monkeypatch.setattr(fallback, "SAFETY_MARGIN_S", 0.0)
    service._deadline_s = 0.3
    with pytest.raises(Exception) as late:
        await asyncio.wait_for(answer(service, {"model": "text-embedding-3-small", "input": "x"}), 5)
    assert (late.value.status, late.value.code) == (504, "upstream_timeout")
    assert records[0].status == 504
