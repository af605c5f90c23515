"""In-house embeddings on the real built-in model (SmolLM2-135M, CPU): the transformers embedder's
padded, batched mean pooling equals a direct torch computation one input at a time; ``dimensions``
shortens and renormalises; the embedding server counts the tokenizer's tokens, prices them, and
refuses what the model cannot take before computing anything."""

from __future__ import annotations

from decimal import Decimal

import numpy
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from config.catalog import InHouseModelSpec, Price  # noqa: E402
from core.backend import Embeddings, UpstreamCall, UpstreamFailure  # noqa: E402
from core.scope import Scope  # noqa: E402
from models.embedding_server import EmbeddingServer  # noqa: E402
from models.engine import EngineOptions  # noqa: E402
from models.pooling import (  # noqa: E402
    TransformersEmbedder,
    as_bytes,
    batches,
    normalized,
    pooling_arguments,
    shortened,
)

NAME = "smollm2-135m-embed"
TEXTS = ["hi", "The cat sat on the mat.", "Paris is the capital of France, and its largest city by far."]
PRICE = Price(input=Decimal(10000), output=Decimal(0))


@pytest.fixture(scope="module")
async def embedder(embedded_model):
    started = TransformersEmbedder(EngineOptions(model_path=embedded_model, max_model_len=64))
    await started.start()
    yield started
    await started.shutdown()


@pytest.fixture(scope="module")
def server(embedder, embedded_tokenizer) -> EmbeddingServer:
    spec = InHouseModelSpec(source="builtin:smollm2-135m-instruct", task="embed", max_model_len=64)
    return EmbeddingServer(NAME, spec, embedder, embedded_tokenizer, {NAME: PRICE})


@pytest.fixture(scope="module")
def direct(embedded_model):
    """The definition, computed plainly: the base model on one unpadded input, the mean of its last
    hidden state over the tokens, divided by its L2 norm."""
    model = transformers.AutoModel.from_pretrained(embedded_model, local_files_only=True, dtype=torch.float32).eval()

    def embed(ids: list[int]) -> numpy.ndarray:
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        mean = hidden.mean(dim=0)
        return (mean / mean.norm()).numpy()

    return embed


def ids_of(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


async def test_batched_padded_pooling_equals_the_direct_computation(embedder, embedded_tokenizer, direct):
    ids = ids_of(embedded_tokenizer, TEXTS)
    assert len({len(i) for i in ids}) == 3  # three lengths in one padded batch
    vectors = await embedder.embed(ids)
    assert vectors.shape == (3, 576) and vectors.dtype == numpy.float32
    for row, tokens in zip(vectors, ids, strict=True):
        numpy.testing.assert_allclose(row, direct(tokens), atol=2e-5)
        assert abs(numpy.linalg.norm(row) - 1) < 1e-5
    # Batched or alone, an input gets the same vector; different texts get different ones.
    alone = await embedder.embed([ids[1]])
    numpy.testing.assert_allclose(alone[0], vectors[1], atol=2e-5)
    assert float(vectors[1] @ vectors[2]) < 0.999


def test_inputs_are_grouped_within_the_token_budget_longest_first():
    groups = batches([3, 10, 4, 10, 1], budget=20)
    assert groups == [[1, 3], [2, 0, 4]]  # 2 x 10 padded tokens, then 3 x 4
    assert batches([50, 2], budget=20) == [[0], [1]]  # an input past the budget goes alone
    assert sorted(i for g in batches(list(range(1, 40)), budget=64) for i in g) == list(range(39))


def test_dimensions_keep_the_head_and_renormalise():
    vectors = normalized(numpy.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]]))
    short = shortened(vectors, 2)
    numpy.testing.assert_allclose(short, [[0.6, 0.8], [1.0, 0.0]], atol=1e-7)
    assert shortened(vectors, None) is vectors
    packed = as_bytes(short)
    assert len(packed) == 16 and numpy.frombuffer(packed, "<f4").tolist() == short.astype(numpy.float32).ravel().tolist()


async def test_the_server_counts_the_tokenizers_tokens_and_prices_them(server, embedder, embedded_tokenizer, direct):
    ids = ids_of(embedded_tokenizer, TEXTS)
    result = await server.embed(UpstreamCall("r1", NAME, {"input": TEXTS}))
    assert isinstance(result, Embeddings) and (result.count, result.dimensions) == (3, 576)
    tokens = sum(map(len, ids))
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (tokens, 0)
    assert result.usage.cost_micro_units == tokens * 10000  # 10000 cost_units per million: exact
    rows = numpy.frombuffer(result.vectors, "<f4").reshape(3, 576)
    numpy.testing.assert_allclose(rows[2], direct(ids[2]), atol=2e-5)
    # The same text as its token ids: the same vector. dimensions: the head, renormalised.
    arrays = await server.embed(UpstreamCall("r2", NAME, {"input": [ids[2]], "dimensions": 64}))
    short = numpy.frombuffer(arrays.vectors, "<f4")
    assert arrays.dimensions == 64
    numpy.testing.assert_allclose(short, rows[2][:64] / numpy.linalg.norm(rows[2][:64]), atol=1e-6)


@pytest.mark.parametrize("body, param, code", [
    ({"input": ["word " * 80]}, "input", "context_length_exceeded"),  # over max_model_len (64)
    ({"input": [[1, 2, 49152]]}, "input", "invalid_value"),  # past the vocabulary
    ({"input": ["hi"], "dimensions": 577}, "dimensions", "invalid_value"),  # longer than the model's vectors
])
async def test_the_server_refuses_what_the_model_cannot_take_before_computing(server, embedder, body, param, code):
    before = embedder.stats().finished + embedder.stats().aborted
    result = await server.embed(UpstreamCall("r3", NAME, body))
    assert isinstance(result, UpstreamFailure) and not result.retriable
    assert (result.error.status, result.error.param, result.error.code) == (400, param, code)
    assert embedder.stats().finished + embedder.stats().aborted == before  # nothing ran


async def test_a_scope_without_in_house_models_is_refused_before_the_model(server, embedder):
    before = embedder.stats().finished
    scope = Scope(excluded_providers=frozenset({"inhouse"}))
    result = await server.embed(UpstreamCall("r4", NAME, {"input": ["hi"]}, scope=scope))
    assert isinstance(result, UpstreamFailure) and result.error.status == 403
    assert embedder.stats().finished == before


def test_vllm_runs_it_on_its_pooling_runner_with_mean_pooling(tmp_path):
    options = EngineOptions(model_path=tmp_path, max_model_len=8192, max_lora_rank=16,
                            extra={"max_num_batched_tokens": 4096})
    arguments = pooling_arguments(options, gpu=False)
    assert (arguments["runner"], arguments["convert"]) == ("pooling", "embed")
    assert arguments["pooler_config"] == {"pooling_type": "MEAN"}
    assert "enable_lora" not in arguments and arguments["dtype"] == "float32"
    assert arguments["max_num_batched_tokens"] == 4096  # the catalog's engine_kwargs still win
