"""The fakes must speak the providers' real wire formats: the official SDKs parse them."""

import anthropic
import openai

from tests.support.upstreams import CREDENTIALS, Behaviour


def test_openai_sdk_reads_the_fake_openai_and_deepseek(upstreams):
    for provider, model in (("openai", "gpt-4o-mini"), ("deepseek", "deepseek-chat")):
        client = openai.OpenAI(base_url=upstreams.base_urls()[provider], api_key=CREDENTIALS[provider], max_retries=0)
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "ping pong"}])
        assert answer.choices[0].message.content == "Echo: ping pong "
        chunks = list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "ping pong"}], stream=True,
            stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: ping pong "
        assert chunks[-1].usage.completion_tokens == 3


def test_anthropic_sdk_reads_the_fake_anthropic(upstreams):
    client = anthropic.Anthropic(base_url=upstreams.base_urls()["anthropic"], api_key=CREDENTIALS["anthropic"], max_retries=0)
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                     messages=[{"role": "user", "content": "ping pong"}])
    assert message.content[0].text == "Echo: ping pong " and message.usage.output_tokens == 3
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=10,
                                messages=[{"role": "user", "content": "ping pong"}]) as stream:
        assert "".join(stream.text_stream) == "Echo: ping pong "
        assert stream.get_final_message().usage.output_tokens == 3


def test_the_fakes_fail_the_way_providers_do(upstreams):
    upstreams.script("claude-haiku-4-5", Behaviour(status=529))
    client = anthropic.Anthropic(base_url=upstreams.base_urls()["anthropic"], api_key=CREDENTIALS["anthropic"], max_retries=0)
    try:
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    except anthropic.APIStatusError as error:
        assert error.status_code == 529
    else:
        raise AssertionError("expected an overloaded error")
    upstreams.script("gpt-4o-mini", Behaviour(mid_stream_error=True))
    client = openai.OpenAI(base_url=upstreams.base_urls()["openai"], api_key=CREDENTIALS["openai"], max_retries=0)
    try:
        list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "a b c d"}]))
    except openai.APIError:
        pass
    else:
        raise AssertionError("expected a stream error")
