"""In-house models from the catalog to a running deployment: settings, routing, Serve options,
engine choice and arguments, and where the weights come from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from actors.routing.table import Backend, build_routing_table
from config.catalog import Autoscaling, InHouseModelSpec
from config.settings import ConfigError, load_settings
from core.errors import GatewayError
from core.scope import Scope
from models import engine_choice as engines
from models import model_source
from models.engine import EngineError, EngineOptions
from models.engine_choice import engine_kind, engine_options
from models.model_source import ModelSourceError, check_folder, resolve
from models.vllm_engine import GIB, engine_arguments

ALL_PROVIDERS = ["openai", "anthropic", "deepseek"]
BUILTIN = "builtin:smollm2-135m-instruct"


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "neuroapi.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# Settings and routing

def test_one_yaml_entry_adds_an_unpriced_in_house_model_to_routing(tmp_path):
    settings = load_settings(write(tmp_path, {"in_house_models": {"my-model": {"source": "/models/x"}}}), environ={})
    assert settings.served_in_house()["my-model"].source == "/models/x"
    assert "my-model" not in settings.prices
    table = build_routing_table(settings, [])
    backend = table.resolve("my-model").candidates[0].backend
    assert backend == Backend("my-model", "inhouse", "engine", in_house=True,
                              capabilities=frozenset({"forced_tools", "json_object", "json_schema", "logprobs"}))
    assert backend.deployment == "Model-my-model"
    table = build_routing_table(settings, ALL_PROVIDERS)
    assert table.listing(Scope(in_house_only=True)) == ["private", "my-model", "smollm2-135m-embed",
                                                        "smollm2-135m-instruct"]


def test_an_in_house_model_cannot_take_a_provider_models_name(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, {"in_house_models": {"gpt-4o-mini": {"source": "/models/x"}}}), environ={})
    assert "in_house_models.gpt-4o-mini" in str(raised.value)
    assert "provider 'openai'" in str(raised.value)


@pytest.mark.parametrize("entry, field", [
    ({"source": "/x", "engine": "tgi"}, "in_house_models.m.engine"),
    ({"source": "/x", "max_concurrency": 0}, "in_house_models.m.max_concurrency"),
    ({"source": ""}, "in_house_models.m.source"),
    ({"source": "/x", "autoscaling": {"max_replicas": 0}}, "in_house_models.m.autoscaling.max_replicas"),
])
def test_a_bad_in_house_entry_names_the_field(tmp_path, entry, field):
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, {"in_house_models": {"m": entry}}), environ={})
    assert field in str(raised.value)


def test_in_house_models_switched_off_are_not_routed_or_listed():
    settings = load_settings(environ={"NEUROAPI_IN_HOUSE_MODELS": "0"})
    table = build_routing_table(settings, ALL_PROVIDERS)
    assert not any(backend.in_house for backend in table.models.values())
    assert "private" not in table.listing()
    assert table.listing(Scope(in_house_only=True)) == []
    with pytest.raises(GatewayError) as raised:
        table.resolve("private")
    assert (raised.value.status, raised.value.code) == (404, "model_not_available")
    on = build_routing_table(load_settings(environ={}), ALL_PROVIDERS)
    assert "private" in on.listing()  # the default: on


# Serve options

def test_options_use_fixed_replicas_and_the_catalogs_limits():
    from models.deployment import options_for

    options = options_for("my-model", InHouseModelSpec(source="x", replicas=3, max_concurrency=4, max_queued=10))
    assert options["name"] == Backend("my-model", "inhouse", "engine", True).deployment
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (4, 10)
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}


def test_autoscaling_replaces_replicas():
    from models.deployment import options_for

    scaling = Autoscaling(min_replicas=0, max_replicas=4, target_ongoing_requests=2)
    options = options_for("m", InHouseModelSpec(source="x", replicas=3, autoscaling=scaling))
    assert options["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2}
    assert "num_replicas" not in options


@pytest.mark.parametrize("num_gpus, tensor_parallel_size, reserved", [(0, 1, 0), (0, 4, 0), (1, 1, 1), (2, 1, 2), (0.5, 1, 0.5),
                                                                      (1, 4, 4)])
def test_a_gpu_replica_reserves_a_gpu_per_tensor_parallel_rank(num_gpus, tensor_parallel_size, reserved):
    from models.deployment import options_for

    spec = InHouseModelSpec(source="x", num_gpus=num_gpus, tensor_parallel_size=tensor_parallel_size)
    assert options_for("m", spec)["ray_actor_options"]["num_gpus"] == reserved


# vLLM's engine arguments

def options(**fields) -> EngineOptions:
    return EngineOptions(model_path=Path("/models/m"), max_model_len=2048, **fields)


def test_on_cpu_auto_dtype_is_float32_and_the_kv_cache_is_sized_in_bytes():
    arguments = engine_arguments(options(cpu_kv_cache_gib=0.5, max_num_seqs=4), gpu=False)
    assert arguments["dtype"] == "float32"
    assert arguments["kv_cache_memory_bytes"] == GIB // 2 == 512 * 1024 * 1024
    assert "gpu_memory_utilization" not in arguments and "tensor_parallel_size" not in arguments
    assert (arguments["model"], arguments["max_model_len"], arguments["max_num_seqs"]) == ("/models/m", 2048, 4)
    assert engine_arguments(options(dtype="bfloat16"), gpu=False)["dtype"] == "bfloat16"  # an explicit choice stays


def test_on_gpu_parallelism_and_memory_share_are_set_and_dtype_kept():
    arguments = engine_arguments(options(tensor_parallel_size=2, gpu_memory_utilization=0.8), gpu=True)
    assert (arguments["tensor_parallel_size"], arguments["gpu_memory_utilization"]) == (2, 0.8)
    assert arguments["dtype"] == "auto"
    assert "kv_cache_memory_bytes" not in arguments


@pytest.mark.parametrize("gpu", [False, True])
def test_engine_kwargs_win_and_requests_are_never_logged(gpu):
    spec = InHouseModelSpec(source="x", max_concurrency=3, engine_kwargs={"dtype": "half", "max_model_len": 99})
    arguments = engine_arguments(engine_options(spec, Path("/models/m")), gpu=gpu)
    assert (arguments["dtype"], arguments["max_model_len"]) == ("half", 99)
    assert arguments["max_num_seqs"] == 3  # the catalog's max_concurrency is the engine's batch
    assert arguments["enable_log_requests"] is False  # request logs would hold prompt text


def test_engine_arguments_are_fields_of_the_installed_vllm():
    vllm = pytest.importorskip("vllm")
    fields = {field.name for field in dataclasses.fields(vllm.AsyncEngineArgs)}
    for gpu in (False, True):
        for lora_rank in (0, 16):
            assert set(engine_arguments(options(max_lora_rank=lora_rank), gpu=gpu)) <= fields


# Engine choice

@pytest.mark.parametrize("installed, kind", [(True, "vllm"), (False, "transformers")])
def test_auto_picks_vllm_only_where_it_is_installed(monkeypatch, installed, kind):
    monkeypatch.setattr(engines, "vllm_installed", lambda: installed)
    assert engine_kind("auto") == kind
    assert engine_kind("transformers") == "transformers"


def test_vllm_configured_but_missing_says_what_to_do(monkeypatch):
    monkeypatch.setattr(engines, "vllm_installed", lambda: False)
    with pytest.raises(EngineError) as raised:
        engine_kind("vllm")
    assert "not installed" in str(raised.value) and "engine: auto" in str(raised.value)
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)
    assert engine_kind("vllm") == "vllm"


# Model sources

def model_folder(path: Path, *files: str) -> Path:
    path.mkdir()
    for name in files:
        (path / name).write_text("{}")
    return path


def test_a_model_folder_resolves_to_itself(tmp_path):
    folder = model_folder(tmp_path / "m", "config.json", "tokenizer_config.json", "model.safetensors")
    assert resolve(str(folder), tmp_path / "cache") == folder


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(ModelSourceError, match="is not a model folder"):
        check_folder(tmp_path / "nowhere")


def test_a_folder_without_config_json_is_refused_naming_it(tmp_path):
    folder = model_folder(tmp_path / "m", "tokenizer_config.json", "model.safetensors")
    with pytest.raises(ModelSourceError, match=r"missing: config\.json\)"):
        check_folder(folder)


def test_pickled_weights_are_refused(tmp_path):
    folder = model_folder(tmp_path / "m", "config.json", "tokenizer_config.json", "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match="safetensors"):
        check_folder(folder)


def test_an_unknown_builtin_model_names_the_builtin_ones(tmp_path):
    with pytest.raises(ModelSourceError) as raised:
        resolve("builtin:nope", tmp_path)
    assert "'nope'" in str(raised.value) and "smollm2-135m-instruct" in str(raised.value)


@pytest.fixture
def builtin_gguf():
    try:
        return model_source.builtin_gguf("smollm2-135m-instruct")
    except ModelSourceError as error:
        pytest.skip(f"the built-in model is not available: {error}")


def fake_conversion(monkeypatch, fail: bool = False) -> list[Path]:
    """Replaces the (40 s) conversion; returns the folders it was asked to write."""
    calls: list[Path] = []

    def convert(gguf, out, progress=True):
        calls.append(out)
        if fail:
            (out / "config.json").write_text("{half")
            raise ModelSourceError("conversion failed")
        (out / "model.safetensors").write_text("new")

    monkeypatch.setattr(model_source, "convert_gguf", convert)
    return calls


def test_a_stale_stamp_converts_the_builtin_model_again(tmp_path, monkeypatch, builtin_gguf):
    old = model_folder(tmp_path / "smollm2-135m-instruct", "model.safetensors", "leftover.txt")
    (old / "neuroapi-source.json").write_text(json.dumps({"gguf": builtin_gguf.name, "size": 1}))
    calls = fake_conversion(monkeypatch)
    assert resolve(BUILTIN, tmp_path, progress=False) == old
    assert len(calls) == 1
    assert (old / "model.safetensors").read_text() == "new" and not (old / "leftover.txt").exists()
    assert json.loads((old / "neuroapi-source.json").read_text()) == {
        "gguf": builtin_gguf.name, "size": builtin_gguf.stat().st_size}
    assert resolve(BUILTIN, tmp_path, progress=False) == old
    assert len(calls) == 1  # fresh stamp: no second conversion


def test_a_failed_conversion_leaves_no_model_folder_behind(tmp_path, monkeypatch, builtin_gguf):
    fake_conversion(monkeypatch, fail=True)
    with pytest.raises(ModelSourceError):
        resolve(BUILTIN, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the model folder nor the staging folder


@pytest.mark.slow
def test_the_builtin_model_converts_once_into_a_safe_model_folder(tmp_path, monkeypatch, builtin_gguf):
    pytest.importorskip("transformers")
    # convert_gguf switches the hub off process-wide; undo it after the test.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    folder = resolve(BUILTIN, tmp_path, progress=False)
    assert folder == tmp_path / "smollm2-135m-instruct"
    check_folder(folder)
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json"} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    template = folder / "chat_template.jinja"
    assert template.is_file() or "chat_template" in json.loads((folder / "tokenizer_config.json").read_text())
    weights = folder / "model.safetensors"
    converted_at = weights.stat().st_mtime_ns
    assert resolve(BUILTIN, tmp_path, progress=False) == folder
    assert weights.stat().st_mtime_ns == converted_at
    assert [path.name for path in tmp_path.iterdir()] == ["smollm2-135m-instruct"]  # no staging left
