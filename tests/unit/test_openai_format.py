"""OpenAI's wire format for in-house models: sampling rules, the prompt's token ids, answer shapes."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from core.backend import Usage
from core.errors import GatewayError
from models.engine import Sampling
from models.openai_format import (
    AnswerHeader,
    choice,
    chunk,
    completion,
    prompt_token_ids,
    sampling_for,
    usage_chunk,
)

HEADER = AnswerHeader("req-1", "my-model", 1_700_000_000, "vllm-cpu")
SHARED = {"id": "chatcmpl-req-1", "created": 1_700_000_000, "model": "my-model", "system_fingerprint": "vllm-cpu"}


def events(data: bytes) -> list[dict]:
    """The JSON of each SSE ``data:`` event, money as Decimal."""
    assert data.endswith(b"\n\n")
    parts = data.split(b"\n\n")[:-1]
    assert all(part.startswith(b"data: ") for part in parts)
    return [json.loads(part.removeprefix(b"data: "), parse_float=Decimal) for part in parts]


# sampling_for

def test_without_max_tokens_the_completion_gets_the_room_left_up_to_the_default():
    assert sampling_for({}, "m", prompt_tokens=10, max_model_len=100, default_max_tokens=32).max_tokens == 32
    assert sampling_for({}, "m", prompt_tokens=90, max_model_len=100, default_max_tokens=32).max_tokens == 10


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_the_callers_max_tokens_is_honoured_even_above_the_default(field):
    assert sampling_for({field: 50}, "m", 10, 100, 32).max_tokens == 50
    assert sampling_for({field: 90}, "m", 10, 100, 32).max_tokens == 90  # exactly fills the context


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_prompt_plus_max_tokens_over_the_context_is_a_400_that_gives_the_numbers(field):
    with pytest.raises(GatewayError) as raised:
        sampling_for({field: 91}, "m", 10, 100, 32)
    error = raised.value
    assert (error.status, error.code, error.param, error.type) == (
        400, "context_length_exceeded", "messages", "invalid_request_error")
    assert "100 tokens" in error.message
    assert "10 in the messages" in error.message and "91 for the completion" in error.message


@pytest.mark.parametrize("prompt_tokens", [100, 130])
def test_a_prompt_that_fills_the_context_alone_is_a_400(prompt_tokens):
    with pytest.raises(GatewayError) as raised:
        sampling_for({}, "m", prompt_tokens, 100, 32)
    assert (raised.value.status, raised.value.code) == (400, "context_length_exceeded")
    assert f"{prompt_tokens} in the messages" in raised.value.message
    assert "for the completion" not in raised.value.message  # the caller sent no max_tokens


@pytest.mark.parametrize("stop, expected", [("END", ("END",)), (["a", "b"], ("a", "b")), ([], ())])
def test_stop_becomes_a_tuple_of_sequences(stop, expected):
    assert sampling_for({"stop": stop}, "m", 1, 100, 8).stop == expected


def test_sampling_parameters_pass_through_and_default_to_openais():
    body = {"temperature": 0.2, "top_p": 0.5, "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -1.5}
    assert sampling_for(body, "m", 1, 100, 8) == Sampling(
        max_tokens=8, temperature=0.2, top_p=0.5, seed=7, presence_penalty=0.5, frequency_penalty=-1.5)
    assert sampling_for({}, "m", 1, 100, 8) == Sampling(
        max_tokens=8, temperature=1.0, top_p=1.0, stop=(), seed=None, presence_penalty=0.0, frequency_penalty=0.0)


# prompt_token_ids on the embedded model's own tokenizer and chat template

@pytest.fixture(scope="module")
def tokenizer(embedded_tokenizer):
    return embedded_tokenizer


def test_developer_role_is_the_system_role(tokenizer):
    def ids(role: str) -> list[int]:
        return prompt_token_ids(tokenizer, [{"role": role, "content": "Answer in French."},
                                            {"role": "user", "content": "Hi"}])

    assert ids("developer") == ids("system")
    # The instruction really is in the prompt (not dropped for the template's default one).
    assert ids("system") != prompt_token_ids(tokenizer, [{"role": "user", "content": "Hi"}])
    assert "Answer in French." in tokenizer.decode(ids("developer"))


def test_text_parts_are_read_like_one_string(tokenizer):
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    as_parts = prompt_token_ids(tokenizer, [{"role": "user", "content": parts}])
    assert as_parts == prompt_token_ids(tokenizer, [{"role": "user", "content": "Hello, world"}])
    assert "Hello, world" in tokenizer.decode(as_parts)


def test_the_prompt_ends_with_the_assistant_turn(tokenizer):
    ids = prompt_token_ids(tokenizer, [{"role": "user", "content": "What is 2 + 2?"}])
    assert "assistant" in tokenizer.decode(ids[-3:])
    assert "What is 2 + 2?" in tokenizer.decode(ids)


# Answer shapes

def test_a_content_chunk_has_openais_chunk_shape():
    [event] = events(chunk(HEADER, {"content": "Hi"}))
    assert event == {**SHARED, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": None, "finish_reason": None}]}


def test_the_finish_chunk_has_an_empty_delta_and_the_reason():
    [event] = events(chunk(HEADER, {}, "length"))
    assert event["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]


def test_the_usage_chunk_has_no_choices_and_the_exact_cost():
    data = usage_chunk(HEADER, Usage(30, 11), "0.41")
    [event] = events(data)
    assert event == {**SHARED, "object": "chat.completion.chunk", "choices": [],
                     "usage": {"prompt_tokens": 30, "completion_tokens": 11, "total_tokens": 41,
                               "cost_units": Decimal("0.41")}}
    assert b'"cost_units": 0.41' in data  # a JSON number written from its text, not a string


def test_a_completion_has_openais_shape_and_the_exact_cost():
    data = completion(HEADER, [choice(0, {"content": "Paris."}, "stop")], Usage(12, 3), "0.000015")
    body = json.loads(data, parse_float=Decimal)
    assert body == {**SHARED, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris.", "refusal": None},
                                 "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                              "cost_units": Decimal("0.000015")}}


def test_a_new_header_is_stamped_now_with_the_engine():
    before = int(time.time())
    header = AnswerHeader.new("r", "my-model", "transformers")
    assert before <= header.created <= int(time.time())
    [event] = events(chunk(header, {"content": "x"}))
    assert (event["id"], event["system_fingerprint"]) == ("chatcmpl-r", "transformers")
