import json
import os
import stat
from decimal import Decimal

import pytest
import yaml

from config.secrets import load_key_material
from config.settings import ConfigError, load_settings


def write(tmp_path, data) -> str:
    path = tmp_path / "neuroapi.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_load_with_the_three_providers_the_embedded_model_and_exact_prices():
    settings = load_settings(environ={})
    assert set(settings.providers) == {"openai", "anthropic", "deepseek"}
    assert not any(spec.in_house for spec in settings.providers.values())
    assert settings.served_in_house()["smollm2-135m-instruct"].source == "builtin:smollm2-135m-instruct"
    assert [c.model for c in settings.modes["private"].candidates] == ["smollm2-135m-instruct"]
    assert load_settings(environ={"NEUROAPI_IN_HOUSE_MODELS": "0"}).served_in_house() == {}
    assert settings.prices["gpt-4o-mini"].input == Decimal("150000")
    assert settings.enabled_providers({}) == []


def test_credentials_decide_which_providers_are_on():
    settings = load_settings(environ={})
    assert settings.enabled_providers({"ANTHROPIC_API_KEY": "x"}) == ["anthropic"]


def test_environment_overrides_redis_and_base_urls():
    settings = load_settings(environ={
        "NEUROAPI_REDIS_URL": "redis://example:6380/1",
        "NEUROAPI_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "NEUROAPI_ANTHROPIC_BASE_URL": "http://127.0.0.1:8",
        "NEUROAPI_DEEPSEEK_BASE_URL": "http://127.0.0.1:7",
    })
    assert settings.redis_url == "redis://example:6380/1"
    assert settings.providers["openai"].base_url_str == "http://127.0.0.1:9/v1"
    assert settings.providers["anthropic"].base_url_str == "http://127.0.0.1:8"
    assert settings.providers["deepseek"].base_url_str == "http://127.0.0.1:7"
    # Overriding one field keeps the rest of the default provider.
    assert settings.providers["openai"].credential_env == "OPENAI_API_KEY"


def test_yaml_merges_into_defaults_and_null_removes(tmp_path):
    path = write(tmp_path, {"port": 9001, "providers": {"deepseek": None},
                            "modes": {"cheap": None, "balanced": None, "smart": None,
                                      "fast": {"candidates": [{"model": "gpt-4o-mini"}]}}})
    settings = load_settings(path, environ={})
    assert settings.port == 9001
    assert "deepseek" not in settings.providers
    assert [c.model for c in settings.modes["fast"].candidates] == ["gpt-4o-mini"]


@pytest.mark.parametrize("overlay, field", [
    ({"port": "eighty"}, "port"),
    ({"modes": {"fast": {"candidates": [{"model": "gpt-4o-mini", "weight": -1}]}}},
     "modes.fast.candidates.0.weight"),
    ({"modes": {"odd": {"candidates": [{"model": "no-such-model"}]}}}, "modes.odd.candidates.0.model"),
    ({"providers": {"openai": {"base_url": "not a url"}}}, "providers.openai.base_url"),
    ({"providers": {"openai": {"adapter": "gemini"}}}, "providers.openai.adapter"),
    ({"prices": {"gpt-4o-mini": None}}, "prices: no price for model 'gpt-4o-mini'"),
    ({"surprise": 1}, "surprise"),
])
def test_validation_errors_name_the_bad_field(tmp_path, overlay, field):
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, overlay), environ={})
    assert field in str(error.value)


def test_removing_a_provider_that_modes_still_use_names_those_modes(tmp_path):
    with pytest.raises(ConfigError, match="modes.cheap.candidates.0.model: unknown model 'deepseek-chat'"):
        load_settings(write(tmp_path, {"providers": {"deepseek": None}}), environ={})


def test_a_model_served_twice_is_rejected(tmp_path):
    path = write(tmp_path, {"providers": {"deepseek": {"models": ["gpt-4o-mini"]}}})
    with pytest.raises(ConfigError, match="already served by"):
        load_settings(path, environ={})


def test_float_prices_are_read_exactly(tmp_path):
    settings = load_settings(write(tmp_path, {"prices": {"gpt-4o-mini": {"input": 0.1, "output": 0.3}}}), environ={})
    assert settings.prices["gpt-4o-mini"].input == Decimal("0.1")


def test_dev_key_material_is_generated_once_private_and_reused(tmp_path):
    settings = load_settings(environ={"NEUROAPI_DATA_DIR": str(tmp_path)})
    first, generated = load_key_material(settings, create=True, environ={})
    assert generated
    path = tmp_path / "secrets.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, generated_again = load_key_material(settings, create=True, environ={})
    assert not generated_again and again.peppers == first.peppers
    assert set(json.loads(path.read_text())) == {"peppers", "envelope_keys"}


def test_environment_key_material_wins_and_must_come_in_pairs(tmp_path):
    settings = load_settings(environ={"NEUROAPI_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="both"):
        load_key_material(settings, environ={"NEUROAPI_PEPPERS": "1:" + "A" * 43})
    with pytest.raises(ConfigError, match="pepper"):
        load_key_material(settings, environ={"NEUROAPI_PEPPERS": "1:short", "NEUROAPI_ENVELOPE_KEYS": "1:x"})
    with pytest.raises(ConfigError, match="Fernet"):
        load_key_material(settings, environ={"NEUROAPI_PEPPERS": "1:" + "A" * 43,
                                             "NEUROAPI_ENVELOPE_KEYS": "1:not-a-key"})
