"""``actors.limits.gate``: what a call may cost at most (never less than it will), the allow-list,
and how a refusal reads. No Redis: the store's own tests are tests/unit/test_limits_store.py."""

from __future__ import annotations

import pytest

from actors.limits.gate import IMAGE_TOKENS, LimitGate, check_model, prompt_bound, refusal
from actors.limits.store import Refused
from actors.routing.table import build_routing_table
from config.settings import load_settings
from core.errors import GatewayError
from core.limits import Limits, RateHeaders
from core.money import cost_micro_units

SETTINGS = load_settings()
TABLE = build_routing_table(SETTINGS, ["openai", "anthropic", "deepseek"])
GATE = LimitGate(store=None, settings=SETTINGS)


def backend(model: str):
    return TABLE.models[model]


def test_the_prompt_bound_is_a_token_per_byte_of_text_and_a_fixed_count_per_image():
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "héllo"},  # 6 bytes
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
        "tools": [{"type": "function", "function": {"name": "f"}}]}
    # every string counts (roles, tool definitions: a template renders them too); the image's URL does not
    assert prompt_bound(body) == len("user") + len("text") + len("héllo".encode()) + IMAGE_TOKENS + len(
        "function") + len("f")


def test_the_completion_bound_is_max_tokens_per_choice_else_what_the_backend_may_write():
    prompt = {"messages": [{"role": "user", "content": "hi"}]}
    assert GATE.worst_case({**prompt, "max_tokens": 10, "n": 3}, [backend("gpt-4o-mini")])[0] == 6 + 30
    in_house = SETTINGS.in_house_models["smollm2-135m-instruct"]
    assert GATE.worst_case({**prompt, "n": 2}, [backend("smollm2-135m-instruct")])[0] == 6 + 2 * in_house.default_max_tokens
    claude = SETTINGS.providers["anthropic"].default_max_tokens  # what NeuroAPI sends Anthropic when none is asked
    assert GATE.worst_case(prompt, [backend("claude-haiku-4-5")])[0] == 6 + claude
    window = SETTINGS.card("gpt-4o-mini").context_length
    assert GATE.worst_case(prompt, [backend("gpt-4o-mini")])[0] == 6 + window


def test_a_modes_worst_case_is_priced_at_its_dearest_candidate():
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    order = [backend("gpt-4o-mini"), backend("claude-haiku-4-5"), backend("deepseek-chat")]
    tokens, cost = GATE.worst_case(body, order)
    costs = [cost_micro_units(SETTINGS.prices[b.model], 6, 100) for b in order]
    assert (tokens, cost) == (106, max(costs)) and len(set(costs)) == 3


def test_the_allow_list_takes_the_mode_or_the_model_the_caller_named():
    limits = Limits(models=frozenset({"private", "gpt-4o-mini"}))
    check_model(limits, "private", None)
    check_model(limits, "gpt-4o-mini", "fast")  # a model of a mode, named
    check_model(limits, "smollm2-135m-instruct", "private")  # pinned within an allowed mode
    check_model(Limits(), "anything", None)
    with pytest.raises(GatewayError) as refused:
        check_model(limits, "fast", "fast")
    assert (refused.value.status, refused.value.code) == (403, "model_not_allowed")
    assert "gpt-4o-mini, private" in refused.value.message and "'fast'" in refused.value.message


def test_refusals_read_as_openais():
    headers = RateHeaders(request_limit=5, requests_remaining=0, requests_reset_ms=59_000)
    rate = refusal(Refused("rpm", 1.2, headers, ("rpm",)))
    assert (rate.status, rate.code, rate.headers["Retry-After"]) == (429, "rate_limit_exceeded", "2")
    assert rate.headers["x-ratelimit-limit-requests"] == "5" and rate.headers["x-ratelimit-reset-requests"] == "59s"
    budget = refusal(Refused("account_budget", 86_400.0, RateHeaders(), ("account_budget",), 5_000_000, 250_000))
    assert (budget.status, budget.code, budget.type) == (429, "insufficient_quota", "insufficient_quota")
    assert "account" in budget.message and "0.25 of 5 cost_units" in budget.message
