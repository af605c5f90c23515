"""What a user does: the official openai SDK's ``embeddings.create`` against NeuroAPI, for OpenAI's
model (the fake upstream) and the in-house one, in the SDK's default base64 and in floats, with the
exact price, and its typed errors."""

import numpy
import openai
import pytest

from tests.support.upstreams import fake_embedding

SMALL, IN_HOUSE = "text-embedding-3-small", "smollm2-135m-embed"


@pytest.fixture
def sdk(gateway, api_key):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def test_openai_model_in_base64_and_floats_at_the_exact_price(sdk):
    texts = ["red apple", "green pear tree"]
    decoded = sdk.embeddings.with_raw_response.create(model=SMALL, input=texts)  # base64 on the wire
    answer = decoded.parse()
    floats = sdk.embeddings.create(model=SMALL, input=texts, encoding_format="float")
    expected = [fake_embedding(SMALL, text, None).tolist() for text in texts]
    assert [d.embedding for d in answer.data] == [d.embedding for d in floats.data] == expected
    assert [d.index for d in answer.data] == [0, 1] and answer.model == SMALL
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (5, 5)
    assert answer.usage.cost_units == 0.1 and decoded.headers["x-neuroapi-cost-units"] == "0.1"  # 5 x US$0.02/M
    short = sdk.embeddings.create(model="text-embedding-3-large", input=[[1, 2, 3]], dimensions=8)
    assert len(short.data[0].embedding) == 8 and short.usage.prompt_tokens == 3


async def test_in_house_model_with_the_async_client(gateway, api_key):
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, timeout=120)
    decoded = await client.embeddings.create(model=IN_HOUSE, input=["the sky is blue", "the sky is blue"])
    floats = await client.embeddings.create(model=IN_HOUSE, input="the sky is blue", encoding_format="float")
    first, second = (numpy.array(d.embedding, numpy.float32) for d in decoded.data)
    assert first.shape == (576,) and numpy.array_equal(first, second)
    assert numpy.allclose(first, floats.data[0].embedding, atol=1e-5) and abs(numpy.linalg.norm(first) - 1) < 1e-5
    assert decoded.usage.cost_units == pytest.approx(decoded.usage.prompt_tokens * 0.01)
    await client.close()


def test_sdk_raises_typed_errors(sdk):
    with pytest.raises(openai.BadRequestError) as fixed:
        sdk.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=8)
    assert fixed.value.param == "dimensions" and "does not support specifying dimensions" in fixed.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        sdk.embeddings.create(model=SMALL, input=["x", ""])
    assert empty.value.param == "input"
    with pytest.raises(openai.BadRequestError) as chat_model:
        sdk.embeddings.create(model="gpt-4o-mini", input="x")
    assert chat_model.value.code == "model_not_embedding"
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="no-such-embedder", input="x")
