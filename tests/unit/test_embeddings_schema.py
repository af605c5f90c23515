"""POST /v1/embeddings on the wire: every parameter the official SDK sends is honoured, the inputs
OpenAI refuses are refused here too (in its error shape, naming the field), the answer is OpenAI's
exact shape in floats or base64 (the same float32 values either way, read back by the SDK's own
parser), and routing keeps embedding and chat models apart."""

from __future__ import annotations

import base64
import inspect
import json
import random

import numpy
import pytest

from actors.routing.table import attempt_order, build_routing_table, embedding_backend
from config.settings import load_settings
from core.backend import Embeddings, Usage
from core.errors import GatewayError
from core.scope import Scope
from serve_app.endpoints.embeddings.schema import embeddings_answer, parse_embedding_request
from serve_app.endpoints.embeddings.service import check_for_model

BASE = {"model": "text-embedding-3-small", "input": "hello world"}
SDK_SAMPLES = {"input": ["a", "b"], "model": "text-embedding-3-large", "dimensions": 256,
               "encoding_format": "base64", "user": "user-1"}


def sdk_parameters() -> list[str]:
    import openai

    signature = inspect.signature(openai.resources.Embeddings.create)
    return [name for name, p in signature.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and not name.startswith("extra_") and name != "timeout"]


def parse(**fields):
    return parse_embedding_request(json.dumps({**BASE, **fields}).encode())


@pytest.mark.parametrize("name", sdk_parameters())
def test_every_parameter_the_official_sdk_sends_is_honoured(name):
    assert name in SDK_SAMPLES, f"the SDK sends '{name}': decide whether NeuroAPI honours or refuses it"
    request = parse(**{name: SDK_SAMPLES[name]})
    forwarded = request.upstream_body()
    if name == "model":
        assert request.model == SDK_SAMPLES[name]
    elif name == "encoding_format":  # the gateway writes the answer in it; backends answer float32
        assert request.encoding_format == "base64" and name not in forwarded
    else:
        assert forwarded[name] == SDK_SAMPLES[name]


@pytest.mark.parametrize("sent, inputs", [
    ("one text", ["one text"]), (["a", "b"], ["a", "b"]), ([1, 2, 3], [[1, 2, 3]]), ([[1], [2, 3]], [[1], [2, 3]]),
])
def test_every_input_shape_becomes_a_list_of_inputs(sent, inputs):
    assert parse(input=sent).upstream_body()["input"] == inputs


@pytest.mark.parametrize("fields, param, words", [
    ({"input": ""}, "input", "empty string"),
    ({"input": ["a", ""]}, "input", "input 1 is an empty string"),
    ({"input": []}, "input", "must be a string"),
    ({"input": ["a"] * 2049}, "input", "at most 2048 inputs"),
    ({"input": ["a", [1]]}, "input", "not a mix"),
    ({"input": [[1], []]}, "input", "token array 1"),
    ({"input": [[1, -2]]}, "input", "token array 0"),
    ({"input": [1.5]}, "input", "must be a string"),
    ({"input": None}, "input", "must be a string"),
    ({"encoding_format": "int8"}, "encoding_format", "encoding_format"),
    ({"dimensions": 0}, "dimensions", "greater than or equal to 1"),
    ({"dimensions": "256"}, "dimensions", "dimensions"),
    ({"mode": "fast"}, "mode", "'mode' is not supported"),
    ({"model": ""}, "model", "model"),
])
def test_what_openai_refuses_is_a_400_naming_the_field(fields, param, words):
    with pytest.raises(GatewayError) as refused:
        parse(**fields)
    assert (refused.value.status, refused.value.param) == (400, param)
    assert words in refused.value.message
    assert refused.value.body()["error"]["type"] == "invalid_request_error"


def test_a_missing_input_or_model_is_named():
    for missing in ("input", "model"):
        body = {k: v for k, v in BASE.items() if k != missing}
        with pytest.raises(GatewayError) as refused:
            parse_embedding_request(json.dumps(body).encode())
        assert (refused.value.code, refused.value.param) == ("missing_required_parameter", missing)


def vectors(rows: int, dimensions: int) -> numpy.ndarray:
    values = numpy.random.default_rng(7).standard_normal((rows, dimensions)).astype(numpy.float32)
    return values / numpy.linalg.norm(values, axis=1, keepdims=True)


def test_the_answer_is_openais_shape_in_floats_or_base64_with_the_same_float32_values():
    from openai._models import construct_type
    from openai._types import omit
    from openai.lib._parsing._embeddings import parse_embedding_response
    from openai.types import CreateEmbeddingResponse

    rows = vectors(3, 8)
    result = Embeddings(rows.astype("<f4").tobytes(), 3, 8, Usage(7, 0), 1.0)
    floats = json.loads(embeddings_answer(result, "m", "float", "0.14"))
    assert list(floats) == ["object", "data", "model", "usage"] and floats["object"] == "list"
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7, "cost_units": 0.14}
    assert [(d["object"], d["index"]) for d in floats["data"]] == [("embedding", 0), ("embedding", 1), ("embedding", 2)]
    assert numpy.array([d["embedding"] for d in floats["data"]], numpy.float32).tobytes() == rows.tobytes()  # exact
    encoded = json.loads(embeddings_answer(result, "m", "base64", "0.14"))
    assert all(isinstance(d["embedding"], str) for d in encoded["data"])
    assert b"".join(base64.b64decode(d["embedding"]) for d in encoded["data"]) == rows.astype("<f4").tobytes()
    # The official SDK asks for base64 when its caller names no format, and decodes it itself.
    sdk_answer = construct_type(type_=CreateEmbeddingResponse, value=encoded)  # as the SDK reads a response
    parsed = parse_embedding_response(sdk_answer, encoding_format=omit)
    assert [d.embedding for d in parsed.data] == [d["embedding"] for d in floats["data"]]


@pytest.fixture(scope="module")
def table():
    return build_routing_table(load_settings(environ={}), ["openai", "anthropic", "deepseek"])


def test_only_an_embedding_model_embeds_and_the_scope_comes_first(table):
    settings = load_settings(environ={})
    assert embedding_backend(table, "text-embedding-3-small").provider == "openai"
    assert embedding_backend(table, "smollm2-135m-embed").in_house
    assert embedding_backend(table, "smollm2-135m-embed", Scope(in_house_only=True)).model == "smollm2-135m-embed"
    for model, scope, status, code in [
        ("text-embedding-3-small", Scope(in_house_only=True), 403, "scope_forbids"),  # as chat answers it
        ("text-embedding-ada-002", Scope(excluded_providers=frozenset({"openai"})), 403, "scope_forbids"),
        ("gpt-4o-mini", Scope(), 400, "model_not_embedding"),
        ("fast", Scope(), 400, "model_not_embedding"),  # a mode: no fallback to another model's vectors
        ("no-such-model", Scope(), 404, "model_not_found"),
    ]:
        with pytest.raises(GatewayError) as refused:
            embedding_backend(table, model, scope)
        assert (refused.value.status, refused.value.code) == (status, code), model
    assert settings.card("text-embedding-3-large").dimensions == 3072


def test_a_chat_request_for_an_embedding_model_is_a_clear_400(table):
    for model in ("text-embedding-3-small", "smollm2-135m-embed"):
        with pytest.raises(GatewayError) as refused:
            attempt_order(table.resolve(model), {"messages": [{"role": "user", "content": "hi"}]}, random.Random(0))
        assert (refused.value.status, refused.value.code, refused.value.param) == (400, "model_not_chat", "model")
        assert "POST /v1/embeddings" in refused.value.message


@pytest.mark.parametrize("model, fields, param, words", [
    ("text-embedding-ada-002", {"dimensions": 256}, "dimensions", "This model does not support specifying dimensions."),
    ("text-embedding-3-small", {"dimensions": 1537}, "dimensions", "at most 1536"),
    ("text-embedding-3-small", {"input": [[1] * 8193]}, "input", "maximum context length is 8192 tokens"),
    ("text-embedding-3-small", {"input": [[1] * 8000] * 38}, "input", "max 300000 tokens per request"),
])
def test_what_the_model_cannot_take_is_refused_before_calling(table, model, fields, param, words):
    request = parse(**{"model": model, **fields})
    backend = embedding_backend(table, model)
    with pytest.raises(GatewayError) as refused:
        check_for_model(request, load_settings(environ={}).card(model), backend)
    assert (refused.value.status, refused.value.param) == (400, param) and words in refused.value.message


def test_what_the_model_takes_passes():
    settings = load_settings(environ={})
    table = build_routing_table(settings, ["openai"])
    for model, fields in [("text-embedding-3-large", {"dimensions": 3072}), ("text-embedding-3-small", {"input": [[1] * 8192]}),
                          ("smollm2-135m-embed", {"dimensions": 64})]:  # in-house: its replica knows its width
        check_for_model(parse(**{"model": model, **fields}), settings.card(model), embedding_backend(table, model))
