"""Fuzzing every request schema (issue 13): arbitrary JSON, arbitrary bytes and near-valid
mutations of a valid body either parse into the model or are a 400/413 ``GatewayError`` in
OpenAI's error shape, never another exception (which the ingress would answer as a 500). A
chat request that parses is what the caller sent: no value coerced from another JSON type, and
no integer an upstream could not take."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from core.errors import GatewayError
from serve_app.endpoints.chat.schema import ChatCompletionRequest, parse_chat_request
from serve_app.endpoints.parsing import parse_body
from tests.support.request_bodies import SCHEMAS, VALID, encode, json_values, near_valid

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

def check(schema: type[BaseModel], raw: bytes) -> BaseModel | None:
    """The contract: the model, or a 400/413 GatewayError in OpenAI's shape."""
    try:
        parsed = parse_chat_request(raw) if schema is ChatCompletionRequest else parse_body(schema, raw)
    except GatewayError as error:
        assert error.status in (400, 413), error
        body = error.body()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert isinstance(body["error"]["type"], str)
        assert body["error"]["param"] is None or isinstance(body["error"]["param"], str)
        assert body["error"]["code"] is None or isinstance(body["error"]["code"], str)
        json.dumps(body)  # it can be sent
        return None
    assert isinstance(parsed, schema)
    return parsed


def same_json(sent: Any, parsed: Any) -> bool:
    """Equal, and of the same JSON type (an integer where a number is expected is fine)."""
    if isinstance(sent, bool) or isinstance(parsed, bool):
        return isinstance(sent, bool) and isinstance(parsed, bool) and sent == parsed
    if isinstance(sent, (int, float)) and isinstance(parsed, (int, float)):
        return sent == parsed
    if isinstance(sent, dict) and isinstance(parsed, dict):
        return set(parsed) <= set(sent) and all(same_json(sent[k], parsed[k]) for k in parsed)
    if isinstance(sent, list) and isinstance(parsed, list):
        return len(sent) == len(parsed) and all(map(same_json, sent, parsed))
    return type(sent) is type(parsed) and sent == parsed


def forwarded_as_sent(sent: Any, parsed: ChatCompletionRequest) -> None:
    forwarded = parsed.upstream_body()
    for key, value in forwarded.items():
        if key not in sent:  # a default (stream: false), never an invented value
            assert value == ChatCompletionRequest.model_fields[key].default, f"{key} was not sent: {value!r}"
            continue
        assert same_json(sent[key], value), f"{key}: sent {sent[key]!r}, would forward {value!r}"

    def ints(value: Any):
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            yield value
        elif isinstance(value, float):
            assert math.isfinite(value)
        elif isinstance(value, dict):
            for child in value.values():
                yield from ints(child)
        elif isinstance(value, list):
            for child in value:
                yield from ints(child)

    assert all(-(2**63) <= number < 2**63 for number in ints(forwarded)), "an integer no upstream takes"


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_the_valid_example_parses(schema):
    assert check(schema, encode(VALID[schema])) is not None


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
@FUZZ
@given(data=st.data())
def test_any_json_value_is_a_model_or_a_400(schema, data):
    value = data.draw(json_values)
    parsed = check(schema, encode(value))
    if isinstance(parsed, ChatCompletionRequest):
        forwarded_as_sent(value, parsed)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
@FUZZ
@given(data=st.data())
def test_near_valid_bodies_are_a_model_or_a_400(schema, data):
    value = data.draw(near_valid(schema))
    parsed = check(schema, encode(value))
    if isinstance(parsed, ChatCompletionRequest):
        forwarded_as_sent(value, parsed)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
@FUZZ
@given(raw=st.binary(max_size=200) | st.builds(lambda v, cut: encode(v)[:cut], json_values, st.integers(0, 60)))
def test_any_bytes_are_a_model_or_a_400(schema, raw):
    check(schema, raw)


@pytest.mark.parametrize("field, value", [
    ("max_tokens", "10"), ("temperature", "0.5"), ("stream", "yes"), ("stream", 1), ("n", True),
    ("logprobs", 0), ("max_tokens", 10**30), ("seed", 10**40), ("temperature", float("nan")),
])
def test_the_hostile_values_of_the_issue_are_400s(field, value):
    body = {**VALID[ChatCompletionRequest], field: value}
    with pytest.raises(GatewayError) as refused:
        parse_chat_request(json.dumps(body).encode())
    assert refused.value.status == 400
