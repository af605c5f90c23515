"""What a user does: the official openai SDK pointed at NeuroAPI."""

import openai
import pytest

from tests.support.upstreams import Behaviour

MESSAGES = [{"role": "user", "content": "hello sdk"}]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "deepseek-chat", "fast"])
def test_sync_client_non_streamed_and_streamed(gateway, api_key, model):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)
    answer = client.chat.completions.create(model=model, messages=MESSAGES)
    assert answer.choices[0].message.content == "Echo: hello sdk "
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hello sdk "
    assert chunks[-1].usage.completion_tokens == 3


async def test_async_client_non_streamed_and_streamed(gateway, api_key):
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)
    answer = await client.chat.completions.create(model="claude-haiku-4-5", messages=MESSAGES, max_tokens=16)
    assert answer.choices[0].message.content == "Echo: hello sdk "
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: hello sdk "
    await client.close()


def test_sdk_raises_typed_errors(gateway, api_key, upstreams):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert not_found.value.code == "model_not_found"
    # Stored completions contradict the data policy: refused by name (n > 1 is served now).
    with pytest.raises(openai.BadRequestError) as stored:
        client.chat.completions.create(model="fast", messages=MESSAGES, store=True)
    assert "store" in stored.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="neuro_wrongkey_x", max_retries=0).models.list()
    upstreams.script("claude-haiku-4-5", Behaviour(mid_stream_error=True))
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
                model="claude-haiku-4-5", stream=True, messages=[{"role": "user", "content": "a b c d e"}]):
            pass


def test_models_list_through_the_sdk(gateway, api_key):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)
    assert {"fast", "gpt-4o-mini"} <= {m.id for m in client.models.list()}
