import json

import pytest

from actors.errors import GatewayError
from serve_app.schemas import parse_chat_request

BASE = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}


def parse(**changes):
    return parse_chat_request(json.dumps({**BASE, **changes}).encode())


def error_of(raw: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as error:
        parse_chat_request(raw)
    return error.value


def test_a_minimal_request_passes_only_what_was_set():
    assert parse().upstream_body() == {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def test_stream_options_usage_is_read_and_not_forwarded():
    request = parse(stream=True, stream_options={"include_usage": True})
    assert request.wants_usage_in_stream and "stream_options" not in request.upstream_body()


@pytest.mark.parametrize("raw, code, param", [
    (b"{not json", "invalid_json", None),
    (b"[1, 2]", "invalid_json", None),
    (json.dumps({**BASE, "tools": []}).encode(), "unsupported_parameter", "tools"),
    (json.dumps({**BASE, "n": 2}).encode(), "invalid_value", "n"),
    (json.dumps({**BASE, "logprobs": True}).encode(), "invalid_value", "logprobs"),
    (json.dumps({"model": "fast"}).encode(), "missing_required_parameter", "messages"),
    (json.dumps({**BASE, "messages": []}).encode(), "invalid_value", "messages"),
    (json.dumps({**BASE, "messages": [{"role": "tool", "content": "x"}]}).encode(), "invalid_value", "messages.0.role"),
    (json.dumps({**BASE, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}).encode(),
     "invalid_value", "messages.0.content"),
    (json.dumps({**BASE, "temperature": 2.5}).encode(), "invalid_value", "temperature"),
    (json.dumps({**BASE, "stop": ["a", "b", "c", "d", "e"]}).encode(), "invalid_value", "stop"),
    (json.dumps({**BASE, "max_tokens": 5, "max_completion_tokens": 5}).encode(), "invalid_value", None),
    (json.dumps({**BASE, "stream_options": {"include_usage": True}}).encode(), "invalid_value", None),
])
def test_bad_input_is_a_400_naming_the_problem(raw, code, param):
    error = error_of(raw)
    assert (error.status, error.code, error.param) == (400, code, param)
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_error_messages_do_not_echo_the_prompt():
    canary = "CANARY-7f3a-prompt-text"
    error = error_of(json.dumps({**BASE, "messages": [{"role": "wizard", "content": canary}]}).encode())
    assert canary not in error.message
    error = error_of(json.dumps({**BASE, "temperature": canary}).encode())
    assert canary not in error.message
