import random
from collections import Counter

import pytest

from actors.routing.table import attempt_order, build_routing_table
from config.settings import load_settings
from core.errors import GatewayError

SETTINGS = load_settings(environ={})
ALL = build_routing_table(SETTINGS, ["openai", "anthropic", "deepseek"])


def test_a_concrete_model_routes_to_its_provider_only():
    route = ALL.resolve("claude-haiku-4-5")
    assert route.mode is None
    assert [(c.backend.provider, c.backend.model) for c in route.candidates] == [("anthropic", "claude-haiku-4-5")]


def test_first_attempt_follows_weights_and_zero_weight_is_fallback_only():
    route = ALL.resolve("fast")  # gpt-4o-mini 3, claude-haiku-4-5 1, deepseek-chat 0
    rng = random.Random(7)
    orders = [attempt_order(route, {}, rng) for _ in range(4000)]
    firsts = Counter(order[0].model for order in orders)
    assert 0.70 < firsts["gpt-4o-mini"] / 4000 < 0.80
    assert all(order[-1].model == "deepseek-chat" for order in orders)
    assert all(len(order) == 3 for order in orders)


def test_candidates_whose_provider_is_off_are_skipped():
    table = build_routing_table(SETTINGS, ["anthropic"])
    assert [c.backend.model for c in table.resolve("fast").candidates] == ["claude-haiku-4-5"]
    assert "cheap" not in table.listing()  # nothing in it is available
    assert "claude-haiku-4-5" in table.listing() and "gpt-4o-mini" not in table.listing()


@pytest.mark.parametrize("name, code", [("nope", "model_not_found"), ("gpt-4o-mini", "model_not_available"),
                                        ("cheap", "model_not_available")])
def test_unknown_and_unavailable_names_are_404s_that_say_which(name, code):
    table = build_routing_table(SETTINGS, ["anthropic"])
    with pytest.raises(GatewayError) as error:
        table.resolve(name)
    assert (error.value.status, error.value.code) == (404, code)


def test_mode_field_pins_a_model_of_that_mode_or_rejects_it():
    assert [c.backend.model for c in ALL.resolve("claude-haiku-4-5", mode="fast").candidates] == ["claude-haiku-4-5"]
    assert len(ALL.resolve("fast", mode="fast").candidates) == 3
    with pytest.raises(GatewayError) as error:
        ALL.resolve("gpt-5.4", mode="fast")
    assert (error.value.status, error.value.param) == (400, "model")


def test_candidates_that_cannot_honour_a_parameter_are_dropped():
    order = attempt_order(ALL.resolve("fast"), {"presence_penalty": 1.0}, random.Random(1))
    assert "claude-haiku-4-5" not in [b.model for b in order]
    with pytest.raises(GatewayError) as error:
        attempt_order(ALL.resolve("claude-haiku-4-5"), {"seed": 4}, random.Random(1))
    assert error.value.status == 400 and "seed" in error.value.message


def test_a_finetune_named_by_a_caller_or_a_mode_is_routed_in_house_and_resolved_per_call(tmp_path):
    from pathlib import Path

    from actors.routing.table import FINETUNE_WIRE
    from core.backend import LoraAdapter
    from core.scope import Scope

    path = tmp_path / "neuroapi.yaml"
    path.write_text('modes: {support: {candidates: [{model: "ft:bot", weight: 1}, {model: gpt-4o-mini, weight: 0}]}}')
    table = build_routing_table(load_settings(path, environ={}), ["openai"])
    direct = table.resolve("ft:bot").candidates
    assert [(c.backend.model, c.backend.wire, c.backend.in_house) for c in direct] == [
        ("ft:bot", FINETUNE_WIRE, True)]
    assert [c.backend.model for c in table.resolve("support").candidates] == ["ft:bot", "gpt-4o-mini"]
    assert "support" in table.listing(Scope(in_house_only=True))  # a fine-tune is in-house
    adapter = LoraAdapter("bot@v2", Path("/store/bot/v2"), price_name="ft:bot")
    served = table.with_adapter("ft:bot", "smollm2-135m-instruct", adapter)
    assert (served.deployment, served.finetune) == ("Model-smollm2-135m-instruct", adapter)
    with pytest.raises(GatewayError) as missing:
        table.with_adapter("ft:bot", "gpt-4o-mini", adapter)  # a third party's model is no base
    assert missing.value.code == "model_not_available"
