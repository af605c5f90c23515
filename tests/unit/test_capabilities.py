"""What a request asks of a model, and how routing answers when a model cannot do it."""

import random

import pytest

from actors.routing.table import attempt_order, build_routing_table
from config.settings import load_settings
from core import capabilities as cap
from core.errors import GatewayError

USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://img.example/a.png"}}


@pytest.mark.parametrize("extra, needs", [
    ({}, {}),
    ({"tools": [TOOL]}, {cap.TOOLS: "tools"}),
    ({"tools": [TOOL], "tool_choice": "none"}, {}),
    ({"tools": [TOOL], "tool_choice": "required"}, {cap.FORCED_TOOLS: "tool_choice"}),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}}, {cap.FORCED_TOOLS: "tool_choice"}),
    ({"tools": [TOOL], "parallel_tool_calls": True}, {cap.TOOLS: "tools", cap.PARALLEL_TOOLS: "parallel_tool_calls"}),
    ({"tools": [TOOL], "parallel_tool_calls": False}, {cap.TOOLS: "tools"}),
    ({"response_format": {"type": "text"}}, {}),
    ({"response_format": {"type": "json_object"}}, {cap.JSON_OBJECT: "response_format"}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, {cap.JSON_SCHEMA: "response_format"}),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, IMAGE]}]}, {cap.VISION: "image_url"}),
    ({"logprobs": True, "top_logprobs": 2}, {cap.LOGPROBS: "logprobs"}),
    ({"logprobs": False}, {}),
    ({"n": 1}, {}),
    ({"n": 2}, {cap.N: "n"}),
    ({"reasoning_effort": "low"}, {cap.REASONING: "reasoning_effort"}),
    ({"logit_bias": {"50256": -100}}, {cap.LOGIT_BIAS: "logit_bias"}),
])
def test_each_field_asks_for_its_capability(extra, needs):
    assert cap.required({"model": "m", "messages": USER, **extra}) == needs
    assert set(needs) <= cap.ALL


def test_a_model_that_lacks_a_capability_is_named_with_the_field():
    body = {"messages": USER, "tools": [TOOL]}
    assert cap.lacking(frozenset({cap.FORCED_TOOLS}), body, "tiny") == "'tools' is not supported by model 'tiny'"
    assert cap.lacking(frozenset({cap.TOOLS}), body, "big") is None


@pytest.fixture(scope="module")
def table():
    return build_routing_table(load_settings(environ={}), ["openai", "anthropic", "deepseek"])


def test_a_mode_skips_candidates_that_cannot_honour_the_request(table):
    body = {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}
    for seed in range(20):  # whatever the weighted draw, deepseek (no json_schema) is never tried
        order = attempt_order(table.resolve("cheap"), body, random.Random(seed))
        assert [b.model for b in order] == ["gpt-4o-mini"]
    order = attempt_order(table.resolve("fast"), {"messages": USER, "n": 2}, random.Random(0))
    assert [b.model for b in order] == ["gpt-4o-mini"]  # only it has n > 1


def test_a_named_model_without_the_capability_is_a_400(table):
    with pytest.raises(GatewayError) as refused:
        attempt_order(table.resolve("smollm2-135m-instruct"), {"messages": USER, "tools": [TOOL]}, random.Random(0))
    assert refused.value.status == 400 and refused.value.code == "unsupported_parameter"
    assert "'tools' is not supported by model 'smollm2-135m-instruct'" in refused.value.message
    forced = {"messages": USER, "tools": [TOOL], "tool_choice": "required"}
    assert [b.model for b in attempt_order(table.resolve("smollm2-135m-instruct"), forced, random.Random(0))] == [
        "smollm2-135m-instruct"]


def test_the_catalog_gives_every_shipped_provider_model_a_card():
    settings = load_settings(environ={})
    for provider in settings.providers.values():
        for model in provider.models:
            card = settings.card(model)
            if card.task == "embed":  # an embedding model's card: its input bound and its vectors' length
                assert card.context_length and card.dimensions and not card.supports, model
                continue
            assert card.context_length and cap.TOOLS in card.supports, model
    assert settings.card("unknown-model").supports == []  # plain text only, never assumed


@pytest.mark.parametrize("field, value", [("verbosity", "low"), ("service_tier", "priority")])
def test_a_field_an_in_house_model_cannot_honour_skips_it_or_is_named(table, field, value):
    body = {"messages": USER, field: value}
    with pytest.raises(GatewayError) as refused:
        attempt_order(table.resolve("smollm2-135m-instruct"), body, random.Random(0))
    assert f"'{field}'" in refused.value.message and "in-house" in refused.value.message
    # Its default value, and hints that change nothing in its answer, pass.
    for harmless in ({"verbosity": "medium"}, {"service_tier": "auto"}, {"prompt_cache_key": "k"}, {"metadata": {"a": "b"}}):
        assert attempt_order(table.resolve("smollm2-135m-instruct"), {"messages": USER, **harmless}, random.Random(0))
