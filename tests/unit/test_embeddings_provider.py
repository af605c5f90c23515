"""Embeddings through the OpenAI adapter and the provider client, against the fake OpenAI API on
loopback (no Ray): what is sent, the vectors and the price that come back, what OpenAI refuses, an
unreadable answer, and the proxy's own scope check. The official SDK keeps the fake honest."""

from __future__ import annotations

import base64
import json

import numpy
import openai
import pytest

from actors.providers import ADAPTERS
from actors.providers.client import ProviderClient
from actors.providers.proxy import ProviderProxy
from config.settings import load_settings
from core.backend import Embeddings, UpstreamCall, UpstreamFailure
from core.scope import Scope
from tests.support.upstreams import CREDENTIALS, Behaviour, fake_embedding

SMALL = "text-embedding-3-small"


def client(upstreams, max_response_bytes: int = 3 << 20) -> ProviderClient:
    settings = load_settings(environ={"NEUROAPI_OPENAI_BASE_URL": upstreams.base_urls()["openai"]})
    spec = settings.providers["openai"]
    return ProviderClient(ADAPTERS[spec.adapter](spec, CREDENTIALS["openai"]), settings.prices, max_response_bytes)


def call(model: str = SMALL, **body) -> UpstreamCall:
    return UpstreamCall("req-embed", model, {"input": ["hello world", "a b c"], **body})


def rows(result: Embeddings) -> numpy.ndarray:
    return numpy.frombuffer(result.vectors, "<f4").reshape(result.count, result.dimensions)


async def test_vectors_come_back_exactly_and_priced_on_input_tokens(upstreams):
    result = await client(upstreams).embed(call(user="u-1"))
    assert isinstance(result, Embeddings) and (result.count, result.dimensions) == (2, 1536)
    assert rows(result).tobytes() == numpy.stack([fake_embedding(SMALL, "hello world", None),
                                                  fake_embedding(SMALL, "a b c", None)]).tobytes()
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 0)
    assert result.usage.cost_micro_units == 5 * 20000  # US$0.02 per million tokens = 20000 cost_units
    # Asked as base64 (exact float32, a quarter of the text), with only what the caller set.
    assert upstreams.requests[-1].body == {"model": SMALL, "input": ["hello world", "a b c"],
                                           "encoding_format": "base64", "user": "u-1"}
    assert upstreams.requests[-1].path == "/openai/v1/embeddings"


async def test_dimensions_reach_openai_and_shorten_the_vectors(upstreams):
    result = await client(upstreams).embed(call("text-embedding-3-large", dimensions=256))
    assert result.dimensions == 256
    assert rows(result)[1].tobytes() == fake_embedding("text-embedding-3-large", "a b c", 256).tobytes()
    assert result.usage.cost_micro_units == 5 * 130000


async def test_an_embeddings_answer_has_its_own_size_bound_not_a_chat_answers(upstreams):
    small = client(upstreams, max_response_bytes=64 * 1024)  # a chat answer this size would be refused
    result = await small.embed(UpstreamCall("r", SMALL, {"input": [f"text {i}" for i in range(64)]}))
    assert isinstance(result, Embeddings) and result.count == 64  # about 530 kB of base64 vectors
    assert len(result.vectors) == 64 * 1536 * 4


@pytest.mark.parametrize("body, words", [
    ({"input": ["word " * 8193]}, "maximum context length is 8192 tokens"),
    ({"dimensions": 8}, "This model does not support specifying dimensions."),
])
async def test_what_openai_refuses_reaches_the_caller_as_a_400_with_its_words(upstreams, body, words):
    model = "text-embedding-ada-002" if "dimensions" in body else SMALL
    result = await client(upstreams).embed(call(model, **body))
    assert isinstance(result, UpstreamFailure) and not result.retriable
    assert result.error.status == 400 and words in result.error.message


@pytest.mark.parametrize("raw", [
    b'{"object": "list", "data": [], "usage": {"prompt_tokens": 1}}',  # no vector for the inputs
    json.dumps({"object": "list", "data": [{"object": "embedding", "index": i, "embedding": "not base64!"}
                                           for i in range(2)], "usage": {"prompt_tokens": 1}}).encode(),
    json.dumps({"object": "list", "data": [{"object": "embedding", "index": 0,
                                            "embedding": base64.b64encode(numpy.float32([numpy.nan]).tobytes()).decode()},
                                           {"object": "embedding", "index": 1,
                                            "embedding": base64.b64encode(numpy.float32([1.0]).tobytes()).decode()}],
                "usage": {"prompt_tokens": 1}}).encode(),  # not a number
    json.dumps({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": "AACAPw=="}] * 2,
                "usage": {"prompt_tokens": 1}}).encode(),  # the same index twice
    b'{"object": "chat.completion", "choices": []}',
])
async def test_an_unreadable_answer_is_a_retriable_502(upstreams, raw):
    upstreams.script(SMALL, Behaviour(raw=raw))
    result = await client(upstreams).embed(call())
    assert isinstance(result, UpstreamFailure) and result.retriable
    assert (result.error.status, result.error.message) == (502, "The upstream provider sent an unreadable answer.")


async def test_upstream_failures_map_as_for_chat(upstreams):
    upstreams.script(SMALL, Behaviour(status=429), Behaviour(status=500))
    limited, failed = await client(upstreams).embed(call()), await client(upstreams).embed(call())
    assert (limited.error.status, limited.retriable) == (429, True)
    assert (failed.error.status, failed.retriable) == (502, True) and "fake failure" not in failed.error.message


async def test_the_proxy_refuses_a_scope_that_forbids_it_before_connecting(upstreams, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CREDENTIALS["openai"])
    settings = load_settings(environ={"NEUROAPI_OPENAI_BASE_URL": upstreams.base_urls()["openai"]})
    proxy = ProviderProxy("openai", settings.providers["openai"], settings.prices)
    try:
        refused = await proxy.embed(UpstreamCall("r", SMALL, {"input": ["x"]}, scope=Scope(in_house_only=True)))
        assert isinstance(refused, UpstreamFailure) and (refused.error.status, refused.error.code) == (403, "scope_forbids")
        assert upstreams.requests == []
        assert isinstance(await proxy.embed(UpstreamCall("r", SMALL, {"input": ["x"]})), Embeddings)
    finally:
        await proxy.close()


async def test_the_fake_answers_the_official_sdk_as_openai_does(upstreams):
    sdk = openai.AsyncOpenAI(api_key=CREDENTIALS["openai"], base_url=upstreams.base_urls()["openai"], max_retries=0)
    decoded = await sdk.embeddings.create(model=SMALL, input="hello world")  # the SDK asks for base64
    floats = await sdk.embeddings.create(model=SMALL, input="hello world", encoding_format="float")
    assert decoded.data[0].embedding == floats.data[0].embedding == fake_embedding(SMALL, "hello world", None).tolist()
    assert (floats.usage.prompt_tokens, floats.model) == (2, SMALL)
    with pytest.raises(openai.BadRequestError, match="does not support specifying dimensions"):
        await sdk.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=8)
    with pytest.raises(openai.BadRequestError, match="is invalid"):
        await sdk.embeddings.create(model=SMALL, input=["x", ""])
    with pytest.raises(openai.NotFoundError, match="not a chat model"):
        await sdk.chat.completions.create(model=SMALL, messages=[{"role": "user", "content": "hi"}])
    await sdk.close()
