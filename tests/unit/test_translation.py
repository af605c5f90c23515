"""Request and answer translation for each provider's real wire format."""

import json

import pytest

from actors.providers.adapter import failure_for_status
from actors.providers.anthropic_api import AnthropicAdapter, to_anthropic
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


# -- Anthropic request ----------------------------------------------------------------------
def test_anthropic_request_moves_system_merges_roles_and_maps_parameters():
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use British spelling."}]},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Colour?"},
        ],
        "max_tokens": 50, "stop": "END", "temperature": 0.5, "top_p": 0.9, "user": "u-42",
    }
    request = to_anthropic(call(body, "claude-haiku-4-5"), 4096, stream=True)
    assert request == {
        "model": "claude-haiku-4-5",
        "system": "Be brief.\n\nUse British spelling.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Colour?"},
        ],
        "max_tokens": 50, "stop_sequences": ["END"], "temperature": 0.5, "top_p": 0.9,
        "metadata": {"user_id": "u-42"}, "stream": True,
    }


def test_anthropic_max_tokens_defaults_and_accepts_max_completion_tokens():
    messages = [{"role": "user", "content": "x"}]
    assert to_anthropic(call({"messages": messages}), 4096, False)["max_tokens"] == 4096
    assert to_anthropic(call({"messages": messages, "max_completion_tokens": 7}), 4096, False)["max_tokens"] == 7
    assert "stream" not in to_anthropic(call({"messages": messages}), 4096, False)


def test_anthropic_headers_and_url():
    adapter = AnthropicAdapter(SETTINGS.providers["anthropic"], "sk-ant-x")
    url, headers, _ = adapter.request(call({"messages": [{"role": "user", "content": "x"}]}), stream=False)
    assert url == "https://api.anthropic.com/v1/messages"
    assert headers["x-api-key"] == "sk-ant-x" and headers["anthropic-version"] == "2023-06-01"
    assert "sk-ant-x" not in repr(adapter)


@pytest.mark.parametrize("body, reason", [
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"seed": 1}, "seed"),
    ({"temperature": 1.5}, "temperature"),
])
def test_anthropic_refuses_what_it_cannot_honour(body, reason):
    assert reason in AnthropicAdapter.unsupported(body)
    assert AnthropicAdapter.unsupported({"temperature": 1.0}) is None


# -- Anthropic answers -----------------------------------------------------------------------
def test_anthropic_answer_becomes_an_openai_completion_with_all_input_tokens():
    adapter = AnthropicAdapter(SETTINGS.providers["anthropic"], "k")
    raw = json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}],
        "stop_reason": "max_tokens", "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 2,
                  "output_tokens": 5},
    }).encode()
    answer, usage = adapter.completion(call({}), raw)
    assert answer["object"] == "chat.completion" and answer["id"] == "chatcmpl-msg_1"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hello world", "refusal": None}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20}
    assert (usage.prompt_tokens, usage.completion_tokens) == (15, 5)


def anthropic_stream(error_after: int | None = None) -> list[SSEEvent]:
    events = [
        SSEEvent("message_start", json.dumps({"type": "message_start", "message": {
            "id": "msg_9", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
            "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1}}})),
        SSEEvent("content_block_start", json.dumps({"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}})),
        SSEEvent("ping", json.dumps({"type": "ping"})),
        SSEEvent("content_block_delta", json.dumps({"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": "Hi"}})),
        SSEEvent("content_block_delta", json.dumps({"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": " you"}})),
        SSEEvent("content_block_stop", json.dumps({"type": "content_block_stop", "index": 0})),
        SSEEvent("message_delta", json.dumps({"type": "message_delta",
                                              "delta": {"stop_reason": "stop_sequence", "stop_sequence": "X"},
                                              "usage": {"output_tokens": 7}})),
        SSEEvent("message_stop", json.dumps({"type": "message_stop"})),
    ]
    if error_after is not None:
        events = events[:error_after] + [SSEEvent("error", json.dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))]
    return events


@pytest.mark.parametrize("wants_usage", [False, True])
def test_anthropic_stream_becomes_openai_chunks(wants_usage):
    translator = AnthropicAdapter(SETTINGS.providers["anthropic"], "k").translator(call({}, wants_usage=wants_usage))
    out = []
    for event in anthropic_stream():
        out += translator.feed(event)
    chunks = events_of(out)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-msg_9" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hi you"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert translator.finished and (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (12, 7)
    # The usage chunk is kept for the client to send last, priced (tests/unit/test_provider_client.py).
    assert [c for c in chunks if not c["choices"]] == []
    if wants_usage:
        assert translator.usage_chunk["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
        assert translator.usage_chunk["id"] == "chatcmpl-msg_9" and translator.usage_chunk["choices"] == []
    else:
        assert translator.usage_chunk is None


def test_anthropic_error_event_fails_the_stream():
    from actors.providers.adapter import StreamFailed
    translator = AnthropicAdapter(SETTINGS.providers["anthropic"], "k").translator(call({}))
    events = anthropic_stream(error_after=4)
    for event in events[:-1]:
        translator.feed(event)
    with pytest.raises(StreamFailed) as failure:
        translator.feed(events[-1])
    assert failure.value.error.status == 502 and failure.value.retriable


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
