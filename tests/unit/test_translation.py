"""Request and answer translation for the OpenAI-wire providers (OpenAI, DeepSeek), and how
upstream failures reach the caller. Anthropic's: test_anthropic_translation*.py."""

import json

import pytest

from actors.providers.adapter import failure_for_status
from actors.providers.deepseek_api import DeepSeekAdapter
from actors.providers.openai_api import OpenAIAdapter
from config.settings import load_settings
from core.backend import UpstreamCall
from core.sse import SSEDecoder, SSEEvent

SETTINGS = load_settings(environ={})


def call(body, model="m", wants_usage=False) -> UpstreamCall:
    return UpstreamCall("req-1", model, body, wants_usage)


def events_of(chunks: list[bytes]) -> list[dict]:
    return [json.loads(e.data) for e in SSEDecoder().feed(b"".join(chunks))]


# -- OpenAI and DeepSeek ---------------------------------------------------------------------
def test_openai_request_asks_for_usage_and_uses_max_completion_tokens():
    adapter = OpenAIAdapter(SETTINGS.providers["openai"], "sk-o")
    body = {"messages": [{"role": "developer", "content": "x"}], "max_tokens": 9, "stream": True}
    url, headers, sent = adapter.request(call(body, "gpt-4o-mini"), stream=True)
    assert url == "https://api.openai.com/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-o"
    assert sent["model"] == "gpt-4o-mini" and sent["max_completion_tokens"] == 9 and "max_tokens" not in sent
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][0]["role"] == "developer"
    _, _, plain = adapter.request(call({"messages": []}, "gpt-4o-mini"), stream=False)
    assert "stream" not in plain and "stream_options" not in plain


def test_deepseek_request_uses_its_own_dialect():
    adapter = DeepSeekAdapter(SETTINGS.providers["deepseek"], "sk-d")
    body = {"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}],
            "max_completion_tokens": 9}
    url, _, sent = adapter.request(call(body, "deepseek-chat"), stream=True)
    assert url == "https://api.deepseek.com/chat/completions"
    assert sent["max_tokens"] == 9 and "max_completion_tokens" not in sent
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["stream_options"] == {"include_usage": True}
    assert "seed" in DeepSeekAdapter.unsupported({"seed": 3})
    assert DeepSeekAdapter.unsupported({"temperature": 1.9}) is None


@pytest.mark.parametrize("wants_usage", [False, True])
def test_openai_stream_passes_chunks_and_strips_usage_unless_asked(wants_usage):
    translator = OpenAIAdapter(SETTINGS.providers["openai"], "k").translator(call({}, wants_usage=wants_usage))
    content = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "A"}}], "usage": None}
    usage = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    out = translator.feed(SSEEvent(None, json.dumps(content)))
    out += translator.feed(SSEEvent(None, json.dumps(usage)))
    out += translator.feed(SSEEvent(None, "[DONE]"))
    assert translator.finished and translator.usage.completion_tokens == 1
    assert events_of(out) == [content]
    assert translator.usage_chunk == (usage if wants_usage else None)


@pytest.mark.parametrize("status, caller_status, retriable", [
    (400, 400, False), (422, 400, False), (413, 413, False), (429, 429, True),
    (401, 502, True), (403, 502, True), (404, 502, True), (500, 502, True), (503, 502, True),
    (529, 502, True), (504, 504, True),
])
def test_upstream_statuses_map_to_caller_statuses(status, caller_status, retriable):
    error, may_retry = failure_for_status(status, "Incorrect API key provided: sk-ab***yz")
    assert (error.status, may_retry) == (caller_status, retriable)
    if status in (401, 403, 500):
        assert "sk-ab" not in error.message  # a provider's words about our credential stay here


def test_prompt_and_completion_never_show_in_reprs():
    from core.backend import Completion
    canary = "CANARY-repr-3b1d"
    assert canary not in repr(call({"messages": [{"role": "user", "content": canary}]}))
    assert canary not in repr(Completion(canary.encode(), None, 1.0))
