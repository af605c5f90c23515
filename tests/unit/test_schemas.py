import json

import pytest

from core.errors import GatewayError
from serve_app.endpoints.admin_finetunes.schema import FineTuneDeploy
from serve_app.endpoints.admin_scopes.schema import ScopeChange
from serve_app.endpoints.auth.schema import Credentials
from serve_app.endpoints.chat.schema import parse_chat_request
from serve_app.endpoints.keys.schema import NewKey
from serve_app.endpoints.parsing import parse_body

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
    (json.dumps({**BASE, "tools": []}).encode(), "invalid_value", "tools"),
    (json.dumps({**BASE, "n": 0}).encode(), "invalid_value", "n"),
    (json.dumps({**BASE, "top_logprobs": 2}).encode(), "invalid_value", None),
    (json.dumps({**BASE, "functions": [{"name": "f"}]}).encode(), "unsupported_parameter", "functions"),
    (json.dumps({**BASE, "web_search_options": {}}).encode(), "unsupported_parameter", "web_search_options"),
    (json.dumps({**BASE, "tool_choice": "required"}).encode(), "invalid_value", None),
    (json.dumps({**BASE, "tools": [{"type": "function", "function": {"name": "f"}}],
                 "tool_choice": {"type": "function", "function": {"name": "g"}}}).encode(), "invalid_value", None),
    (json.dumps({**BASE, "tools": [{"type": "custom", "custom": {"name": "f"}}]}).encode(), "invalid_value", "tools.0.type"),
    (json.dumps({**BASE, "response_format": {"type": "json_schema"}}).encode(), "invalid_value", "response_format"),
    (json.dumps({"model": "fast"}).encode(), "missing_required_parameter", "messages"),
    (json.dumps({**BASE, "messages": []}).encode(), "invalid_value", "messages"),
    (json.dumps({**BASE, "messages": [{"role": "wizard", "content": "x"}]}).encode(), "invalid_value", "messages.0"),
    (json.dumps({**BASE, "messages": [{"role": "function", "name": "f", "content": "x"}]}).encode(),
     "invalid_value", "messages.0"),
    (json.dumps({**BASE, "messages": [{"role": "tool", "content": "x"}]}).encode(),
     "missing_required_parameter", "messages.0.tool_call_id"),
    (json.dumps({**BASE, "messages": [{"role": "assistant", "content": None}]}).encode(), "invalid_value", "messages.0"),
    (json.dumps({**BASE, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}).encode(),
     "missing_required_parameter", "messages.0.content.0.image_url.url"),
    (json.dumps({**BASE, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}).encode(),
     "invalid_value", "messages.0.content.0"),
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


@pytest.mark.parametrize("changes, param", [
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_completion_tokens": "10"}, "max_completion_tokens"),
    ({"temperature": "0.5"}, "temperature"),
    ({"top_p": "1"}, "top_p"),
    ({"stream": "yes"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"n": "1"}, "n"),
    ({"n": True}, "n"),
    ({"logprobs": 0}, "logprobs"),
    ({"seed": "42"}, "seed"),
    ({"max_tokens": True}, "max_tokens"),  # a bool is never an int
    ({"max_tokens": 10.5}, "max_tokens"),
    ({"presence_penalty": False}, "presence_penalty"),
    ({"user": 5}, "user"),
    ({"stream": True, "stream_options": {"include_usage": "true"}}, "stream_options.include_usage"),
    ({"messages": [{"role": "user", "content": 12345}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "hi", "name": 7}]}, "messages.0.name"),
    ({"stop": ["a", 1]}, "stop.1"),
    ({"stop": 5}, "stop"),
])
def test_values_of_the_wrong_json_type_are_refused_not_coerced(changes, param):
    error = error_of(json.dumps({**BASE, **changes}).encode())
    assert (error.status, error.code, error.param) == (400, "invalid_value", param)
    assert error.message.startswith(f"Invalid value for '{param}'")


@pytest.mark.parametrize("changes, param", [
    ({"max_tokens": 10**30}, "max_tokens"),
    ({"max_completion_tokens": 1_000_001}, "max_completion_tokens"),
    ({"seed": 10**40}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"stop": "x" * 1001}, "stop"),
    ({"stop": ["ok", "x" * 1001]}, "stop.1"),
    ({"messages": [{"role": "user", "content": "hi"}] * 10_001}, "messages"),
    ({"messages": [{"role": "user", "content": "hi", "name": "n" * 257}]}, "messages.0.name"),
    ({"user": "u" * 257}, "user"),
])
def test_absurd_sizes_and_numbers_are_refused(changes, param):
    error = error_of(json.dumps({**BASE, **changes}).encode())
    assert (error.status, error.code, error.param) == (400, "invalid_value", param)


def test_non_finite_numbers_are_refused():
    raw = json.dumps({**BASE, "temperature": 1}).encode().replace(b"1}", b"NaN}")
    assert error_of(raw).param == "temperature"


def test_proper_json_types_pass_at_their_bounds():
    request = parse(max_tokens=1_000_000, temperature=1, top_p=0.5, stream=True, n=1, seed=2**63 - 1,
                    stop=["a" * 1000] * 4, presence_penalty=-2, frequency_penalty=2.0, user="u" * 256)
    assert request.upstream_body()["seed"] == 2**63 - 1 and request.temperature == 1.0
    assert parse(seed=-(2**63)).seed == -(2**63)


@pytest.mark.parametrize("model, raw, param", [
    (Credentials, b'{"email": "a@example.com", "password": 1234567890123}', "password"),
    (Credentials, b'{"email": ["a@example.com"], "password": "long enough pw"}', "email"),
    (NewKey, b'{"name": 5}', "name"),
    (ScopeChange, b'{"in_house_only": "yes"}', "in_house_only"),
    (ScopeChange, b'{"in_house_only": 1}', "in_house_only"),
    (ScopeChange, b'{"excluded_providers": "openai"}', "excluded_providers"),
    (FineTuneDeploy, b'{"path": "/x", "base": "b", "name": "n", "account": 5}', "account"),
])
def test_the_other_bodies_are_strict_too(model, raw, param):
    with pytest.raises(GatewayError) as error:
        parse_body(model, raw)
    assert (error.value.status, error.value.code, error.value.param) == (400, "invalid_value", param)


@pytest.mark.parametrize("url", [
    "http://images.example/cat.png",  # not https: the provider would fetch it in the clear
    "https://10.1.2.3/cat.png", "https://127.0.0.1/cat.png", "https://169.254.169.254/latest/meta-data",
    "https://[::1]/cat.png", "https://localhost/cat.png", "https://printer.local/cat.png",
    "https://metadata/computeMetadata", "https://0x7f.0.0.1/cat.png", "https://2130706433/cat.png",
    "https://user@10.0.0.1/cat.png", "ftp://images.example/cat.png", "data:text/html;base64,PGgxPg==",
    "data:image/png,rawbytes",
])
def test_an_image_url_a_provider_would_fetch_inside_a_network_is_refused(url):
    body = {**BASE, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    error = error_of(json.dumps(body).encode())
    assert (error.status, error.param) == (400, "messages.0.content.0.image_url.url")


@pytest.mark.parametrize("url", [
    "https://images.example/cat.png", "https://8.8.8.8/cat.png", "https://cdn.xn--p1ai/a.png",
    "data:image/png;base64,iVBORw0KGgo=",
])
def test_public_and_inline_images_pass_as_sent(url):
    body = {**BASE, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    sent = parse_chat_request(json.dumps(body).encode()).upstream_body()["messages"][0]["content"][0]
    assert sent == {"type": "image_url", "image_url": {"url": url}}


# Every parameter of the official SDK's chat.completions.create, with a value a caller would send:
# each is either honoured (parsed and forwarded) or refused by a 400 that names it. A parameter a
# newer SDK adds fails the walk until someone decides which.
SDK_SAMPLES = {
    "messages": [{"role": "user", "content": "hi"}], "model": "fast",
    "audio": {"voice": "alloy", "format": "mp3"}, "frequency_penalty": 0.5,
    "function_call": "auto", "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "logit_bias": {"50256": -100}, "logprobs": True, "max_completion_tokens": 10, "max_tokens": 10,
    "metadata": {"team": "a"}, "modalities": ["text"], "moderation": {"mode": "off"}, "n": 2,
    "parallel_tool_calls": False, "prediction": {"type": "content", "content": "x"}, "presence_penalty": 0.5,
    "prompt_cache_key": "k", "prompt_cache_options": {"mode": "implicit"}, "prompt_cache_retention": "24h",
    "reasoning_effort": "low", "response_format": {"type": "json_object"}, "safety_identifier": "u1",
    "seed": 7, "service_tier": "flex", "stop": ["\n"], "store": True, "stream": True,
    "stream_options": {"include_usage": True}, "temperature": 0.2,
    "tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}], "top_logprobs": 2,
    "top_p": 0.9, "user": "u1", "verbosity": "low", "web_search_options": {},
}
NEEDS = {"top_logprobs": {"logprobs": True}, "stream_options": {"stream": True},
         "tool_choice": {"tools": SDK_SAMPLES["tools"]}, "parallel_tool_calls": {"tools": SDK_SAMPLES["tools"]}}


def sdk_parameters() -> list[str]:
    import inspect

    import openai
    signature = inspect.signature(openai.resources.chat.Completions.create)
    return [name for name, p in signature.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and not name.startswith("extra_") and name != "timeout"]


@pytest.mark.parametrize("name", sdk_parameters())
def test_every_parameter_the_official_sdk_sends_is_honoured_or_refused_by_name(name):
    assert name in SDK_SAMPLES, f"the SDK sends '{name}': decide whether NeuroAPI honours or refuses it"
    sent = {**BASE, **NEEDS.get(name, {}), name: SDK_SAMPLES[name]}
    try:
        forwarded = parse_chat_request(json.dumps(sent).encode()).upstream_body()
    except GatewayError as error:
        assert error.status == 400 and name in error.message, error.message
        return
    if name == "stream_options":  # read by the gateway itself: each adapter asks for usage its own way
        assert parse_chat_request(json.dumps(sent).encode()).wants_usage_in_stream
    else:
        assert forwarded[name] == SDK_SAMPLES[name]
