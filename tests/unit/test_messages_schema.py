"""The /v1/messages request schema: what Anthropic's SDK can send is accepted or refused by name,
and a Claude backend gets the caller's own JSON object back, field for field."""

import inspect
import json

import anthropic
import pytest

from core.errors import GatewayError
from serve_app.endpoints.messages.schema import parse_messages_request

BASE = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"name": "get_weather", "description": "Weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG = "iVBORw0KGgo="


def parse(**changes):
    return parse_messages_request(json.dumps({**BASE, **changes}).encode())


def error_of(body: dict) -> GatewayError:
    with pytest.raises(GatewayError) as error:
        parse_messages_request(json.dumps(body).encode())
    return error.value


def user(*blocks):
    return {"role": "user", "content": list(blocks)}


# A request using every accepted field and block, as Anthropic's docs write them.
FULL = {
    "model": "claude-sonnet-4-5", "max_tokens": 4096, "mode": "balanced", "stream": True,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    "messages": [
        user({"type": "text", "text": "What is in this image, and the weather in Paris?"},
             {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
             {"type": "image", "source": {"type": "url", "url": "https://upload.example.org/cat.jpg"}},
             {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
              "title": "Notes", "context": "from the user", "citations": {"enabled": False}},
             {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}),
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Call the tool.", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Let me check.", "citations": [
                {"type": "char_location", "cited_text": "notes", "document_index": 0, "document_title": "Notes",
                 "start_char_index": 0, "end_char_index": 5}]},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"},
             "cache_control": {"type": "ephemeral"}}]},
        user({"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
              "content": [{"type": "text", "text": "18 C"},
                          {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}]},
             {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}}),
    ],
    "tools": [{**TOOL, "cache_control": {"type": "ephemeral"}, "strict": True, "type": "custom"}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "stop_sequences": ["\n\nHuman:"], "temperature": 0.5, "top_p": 0.9, "top_k": 40,
    "metadata": {"user_id": "user-7"}, "thinking": {"type": "enabled", "budget_tokens": 2048},
    "service_tier": "standard_only", "output_config": {"effort": "high", "format": {
        "type": "json_schema", "schema": {"type": "object", "additionalProperties": False}}},
    "cache_control": {"type": "ephemeral"}, "diagnostics": {"previous_message_id": "msg_1"},
    "inference_geo": "us", "speed": "standard",
}


def test_every_accepted_field_and_block_validates():
    request = parse_messages_request(json.dumps(FULL).encode())
    assert (request.model, request.mode, request.stream, request.max_tokens) == ("claude-sonnet-4-5", "balanced", True, 4096)


def test_the_native_body_is_the_callers_object_less_mode_not_a_pydantic_round_trip():
    raw = json.dumps(FULL).encode()
    native = parse_messages_request(raw).native_body()
    expected = json.loads(raw)
    del expected["mode"]
    assert native == expected and list(native) == list(expected)
    # Not re-serialised: an integer stays an integer, a number keeps its type, nothing is added.
    raw = b'{"model": "m", "max_tokens": 5, "temperature": 1, "top_p": 1.0, "messages": [{"role": "user", "content": "x"}]}'
    native = parse_messages_request(raw).native_body()
    assert type(native["temperature"]) is int and type(native["top_p"]) is float
    assert native == json.loads(raw) and "stream" not in native


def test_mode_and_stream_are_read():
    assert parse(mode="fast").mode == "fast" and parse().mode is None
    assert parse(stream=True).stream is True and parse().stream is False


@pytest.mark.parametrize("changes, code, param", [
    ({"foo": 1}, "unsupported_parameter", "foo"),
    ({"container": "cntr_1"}, "unsupported_parameter", "container"),
    ({"workspace_id": "wrkspc_1"}, "unsupported_parameter", "workspace_id"),
    ({"max_tokens": None}, "invalid_value", "max_tokens"),
    ({"max_tokens": "10"}, "invalid_value", "max_tokens"),
    ({"max_tokens": True}, "invalid_value", "max_tokens"),
    ({"max_tokens": -1}, "invalid_value", "max_tokens"),
    ({"temperature": 1.5}, "invalid_value", "temperature"),
    ({"temperature": "0.5"}, "invalid_value", "temperature"),
    ({"stream": "yes"}, "invalid_value", "stream"),
    ({"messages": []}, "invalid_value", "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "invalid_value", "messages.0"),
    ({"messages": [{"role": "user", "content": 5}]}, "invalid_value", "messages.0.content"),
    ({"messages": [{"role": "user", "content": []}]}, "invalid_value", "messages.0.content"),
    ({"messages": [user({"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}})]},
     "invalid_value", "messages.0.content.0"),
    ({"messages": [user({"type": "text"})]}, "missing_required_parameter", "messages.0.content.0.text"),
    ({"messages": [user({"type": "text", "text": "x", "bogus": 1})]}, "unsupported_parameter", "messages.0.content.0.bogus"),
    # tool_use belongs to the assistant, tool_result to the user
    ({"messages": [user({"type": "tool_use", "id": "t", "name": "f", "input": {}})]}, "invalid_value", "messages.0.content.0"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
     "invalid_value", "messages.0.content.0"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]}]},
     "invalid_value", "messages.0.content.0.input"),
    ({"messages": [user({"type": "image", "source": {"type": "file", "file_id": "file_1"}})]},
     "invalid_value", "messages.0.content.0.source.type"),
    ({"messages": [user({"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": PNG}})]},
     "invalid_value", "messages.0.content.0.source.media_type"),
    ({"messages": [user({"type": "image", "source": {"type": "base64", "url": "https://a.example/x.png"}})]},
     "invalid_value", "messages.0.content.0.source"),
    ({"messages": [user({"type": "document", "source": {"type": "base64", "media_type": "text/plain", "data": "x"}})]},
     "invalid_value", "messages.0.content.0.source"),
    ({"system": [{"type": "image", "source": {"type": "url", "url": "https://a.example/x.png"}}]},
     "invalid_value", "system.0.type"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}, "invalid_value", "tools.0"),
    ({"tools": [{**TOOL, "defer_loading": True}]}, "unsupported_parameter", "tools.0.defer_loading"),
    ({"tools": [{**TOOL, "name": "has space"}]}, "invalid_value", "tools.0.name"),
    ({"tools": [TOOL, TOOL]}, "invalid_value", None),
    ({"tools": [{"name": "f"}]}, "missing_required_parameter", "tools.0.input_schema"),
    ({"tool_choice": {"type": "any"}}, "invalid_value", None),
    ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "other"}}, "invalid_value", None),
    ({"tools": [TOOL], "tool_choice": {"type": "tool"}}, "invalid_value", "tool_choice"),
    ({"tools": [TOOL], "tool_choice": {"type": "required"}}, "invalid_value", "tool_choice.type"),
    ({"thinking": {"type": "enabled"}}, "invalid_value", "thinking"),
    ({"thinking": {"type": "enabled", "budget_tokens": 512}}, "invalid_value", "thinking.budget_tokens"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "invalid_value", None),  # not below max_tokens
    ({"thinking": {"type": "between_tools"}}, "invalid_value", "thinking.type"),
    ({"output_config": {"format": {"type": "json_object"}}}, "invalid_value", "output_config.format.type"),
    ({"output_config": {"effort": "extreme"}}, "invalid_value", "output_config.effort"),
    ({"service_tier": "priority"}, "invalid_value", "service_tier"),
    ({"metadata": {"user_id": "u", "team": "a"}}, "unsupported_parameter", "metadata.team"),
    ({"stop_sequences": "STOP"}, "invalid_value", "stop_sequences"),
    ({"cache_control": {"type": "persistent"}}, "invalid_value", "cache_control.type"),
])
def test_bad_input_is_a_400_naming_the_field(changes, code, param):
    error = error_of({**BASE, **changes})
    assert (error.status, error.code, error.param) == (400, code, param), error.message


@pytest.mark.parametrize("url", [
    "http://images.example/cat.png", "https://10.1.2.3/cat.png", "https://169.254.169.254/latest",
    "https://localhost/cat.png", "https://metadata/computeMetadata", "ftp://images.example/cat.png",
])
def test_a_url_source_the_provider_would_fetch_inside_a_network_is_refused(url):
    for block in ({"type": "image", "source": {"type": "url", "url": url}},
                  {"type": "document", "source": {"type": "url", "url": url}}):
        error = error_of({**BASE, "messages": [user(block)]})
        assert (error.status, error.param) == (400, "messages.0.content.0.source")


def test_errors_do_not_echo_the_prompt():
    canary = "CANARY-5e1d-messages"
    for body in ({**BASE, "messages": [{"role": "wizard", "content": canary}]},
                 {**BASE, "messages": [user({"type": canary, "text": canary})]},
                 {**BASE, "temperature": canary}, {**BASE, "system": [{"type": "text", "text": canary, "x": 1}]}):
        assert canary not in error_of(body).message


# Every parameter of the official SDK's messages.create, with a value a caller would send: each is
# accepted (and reaches a Claude backend as sent) or refused by a 400 naming it. A parameter a
# newer SDK adds fails the walk until someone decides which.
SDK_SAMPLES = {
    "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}], "model": "claude-sonnet-4-5",
    "cache_control": {"type": "ephemeral", "ttl": "5m"}, "container": "container_1",
    "diagnostics": {"previous_message_id": "msg_1"}, "inference_geo": "us", "metadata": {"user_id": "u1"},
    "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": {"type": "object"}}},
    "service_tier": "auto", "speed": "fast", "stop_sequences": ["END"], "stream": True, "system": "Be brief.",
    "thinking": {"type": "adaptive"}, "tool_choice": {"type": "auto"}, "tools": [TOOL],
    "user_profile_id": "up_1", "workspace_id": "wrkspc_1",
}
REFUSED = {"container", "user_profile_id", "workspace_id"}


def sdk_parameters() -> list[str]:
    signature = inspect.signature(anthropic.resources.messages.Messages.create)
    return [name for name, p in signature.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and not name.startswith("extra_") and name != "timeout"]


@pytest.mark.parametrize("name", sdk_parameters())
def test_every_parameter_the_official_sdk_sends_is_accepted_or_refused_by_name(name):
    assert name in SDK_SAMPLES, f"the SDK sends '{name}': decide whether NeuroAPI accepts or refuses it"
    sent = {**BASE, name: SDK_SAMPLES[name]}
    try:
        native = parse_messages_request(json.dumps(sent).encode()).native_body()
    except GatewayError as error:
        assert name in REFUSED, error.message
        assert error.status == 400 and name in error.message, error.message
        return
    assert name not in REFUSED
    assert native[name] == SDK_SAMPLES[name]


@pytest.mark.parametrize("name, value", [("temperature", 0.2), ("top_p", 0.9), ("top_k", 5)])
def test_sampling_fields_older_sdks_send_are_accepted(name, value):
    assert parse(**{name: value}).native_body()[name] == value
