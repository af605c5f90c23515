"""LoRA fine-tunes in both engines, on the real built-in model (SmolLM2-135M-Instruct, CPU) with
real PEFT adapters (``tests.support.lora``): an adapter changes its requests' answers and nothing else,
two adapters answer differently, at most ``max_loras`` stay resident (least recently used out),
and a request for an adapter fails clearly where LoRA is off or the adapter is broken.

One engine of each kind for the module (vLLM's start-up is the slow part); the converted model
folder is reused from NEUROAPI_MODEL_CACHE_DIR when set."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from core.backend import LoraAdapter  # noqa: E402
from models.engine import Engine, EngineError, EngineOptions, Sampling  # noqa: E402
from models.openai_format import prompt_token_ids  # noqa: E402
from models.transformers_engine import TransformersEngine  # noqa: E402
from tests.support.lora import QUESTION, build_adapter  # noqa: E402

MAX_LORAS = 2
GREEDY = Sampling(max_tokens=24, temperature=0)


@dataclass(frozen=True)
class Adapters:
    first: LoraAdapter
    second: LoraAdapter  # other weights (another seed)
    first_again: LoraAdapter  # a copy of first's files under another key: a third resident adapter
    folder: Path


@pytest.fixture(scope="module")
def model_folder(embedded_model) -> Path:
    return embedded_model


@pytest.fixture(scope="module")
def tokenizer(embedded_tokenizer):
    return embedded_tokenizer


@pytest.fixture(scope="module")
def adapters(model_folder, tmp_path_factory) -> Adapters:
    folder = tmp_path_factory.mktemp("adapters")
    first = build_adapter(model_folder, folder / "first", rank=8, seed=0)
    second = build_adapter(model_folder, folder / "second", rank=8, seed=1)
    shutil.copytree(first, folder / "third")
    return Adapters(LoraAdapter("support-bot@v1", first), LoraAdapter("support-bot@v2.1", second),
                    LoraAdapter("sales-bot@v1", folder / "third"), folder)


def lora_options(model_folder: Path, **fields) -> EngineOptions:
    return EngineOptions(model_path=model_folder, max_model_len=2048, cpu_kv_cache_gib=1,
                         **{"max_lora_rank": 8, "max_loras": MAX_LORAS, **fields})


@pytest.fixture(scope="module", params=["transformers", pytest.param("vllm", marks=pytest.mark.slow)])
async def engine(request, model_folder):
    if request.param == "vllm":
        if importlib.util.find_spec("vllm") is None:
            pytest.skip("vLLM is not installed")
        from models.vllm_engine import VLLMEngine

        started: Engine = VLLMEngine(lora_options(model_folder))  # dtype auto: float32 on a CPU
    else:
        started = TransformersEngine(lora_options(model_folder))
    await started.start()
    yield started
    await started.shutdown()


@pytest.fixture
async def clean(engine):
    """The engine with no adapter resident, whatever an earlier test left."""
    for key in engine.resident_adapters():
        await engine.unload_adapter(key)
    assert engine.resident_adapters() == []
    return engine


def ids_for(tokenizer, question: str = QUESTION) -> list[int]:
    return prompt_token_ids(tokenizer, [{"role": "user", "content": question}])


async def answer(engine: Engine, tokenizer, adapter: LoraAdapter | None = None, question: str = QUESTION) -> str:
    deltas = [delta async for delta in engine.generate(uuid.uuid4().hex, ids_for(tokenizer, question),
                                                       GREEDY, adapter)]
    assert deltas and deltas[-1].finish_reason in ("stop", "length")
    return "".join(delta.text for delta in deltas)


async def held_by_library(engine: Engine) -> set[str]:
    """The adapters the inference library itself holds, beneath the engine's own bookkeeping
    (``resident_adapters``): vLLM's loaded LoRAs, or the PEFT model's adapters (none once the
    plain model is back). By key; one the engine no longer knows of by the library's own name,
    so an adapter evicted from the bookkeeping but left loaded still shows."""
    if engine.name.startswith("vllm"):
        held, keys = await engine._engine.list_loras(), {lora_id: key for key, lora_id in engine._lora_ids.items()}
    else:
        held = set(engine._peft.peft_config) if engine._peft is not None else set()
        keys = {name: key for key, name in engine._adapters.items()}
    return {keys.get(name, name) for name in held}


async def test_an_adapter_changes_only_its_own_requests(clean, tokenizer, adapters):
    engine = clean
    base = await answer(engine, tokenizer)
    assert "Paris" in base
    adapted = await answer(engine, tokenizer, adapters.first)  # not resident: loaded on the way
    assert engine.resident_adapters() == [adapters.first.key]
    assert adapted != base and "Paris" not in adapted
    assert await answer(engine, tokenizer) == base  # the loaded adapter does not touch base requests
    assert await answer(engine, tokenizer, adapters.first) == adapted  # and stays the same itself

    other = await answer(engine, tokenizer, adapters.second)
    assert other not in (base, adapted)  # two fine-tunes, two answers

    # Mixed in flight at once (one batch in vLLM): each request still gets its own model. On a
    # CPU, vLLM 0.32 gave the base requests the adapter in its last LoRA slot here (see
    # models.vllm_engine), whether or not a request in the batch used that adapter.
    together = await asyncio.gather(answer(engine, tokenizer, adapters.second), answer(engine, tokenizer),
                                    answer(engine, tokenizer, adapters.first))
    assert together == [other, base, adapted]
    together = await asyncio.gather(answer(engine, tokenizer), answer(engine, tokenizer),
                                    answer(engine, tokenizer, adapters.first))
    assert together == [base, base, adapted]
    assert engine.stats().running == 0


async def test_at_most_max_loras_stay_resident_least_recently_used_out(clean, tokenizer, adapters):
    engine = clean
    first, second, third = adapters.first, adapters.second, adapters.first_again
    await engine.load_adapter(first)
    await engine.load_adapter(second)
    await engine.load_adapter(first)  # already resident: only touched
    assert engine.resident_adapters() == [second.key, first.key]
    assert await held_by_library(engine) == {first.key, second.key}

    await engine.load_adapter(third)
    assert engine.resident_adapters() == [first.key, third.key]  # second was the least recently used
    assert await held_by_library(engine) == {first.key, third.key}

    # A request touches its adapter too; one not resident is loaded again, evicting the oldest.
    adapted = await answer(engine, tokenizer, third)  # same weights as first, under its own key
    assert adapted == await answer(engine, tokenizer, first)
    await answer(engine, tokenizer, second)
    assert engine.resident_adapters() == [first.key, second.key]
    assert await held_by_library(engine) == {first.key, second.key}

    await engine.unload_adapter(first.key)
    await engine.unload_adapter(first.key)  # idempotent
    await engine.unload_adapter("never-loaded")
    assert engine.resident_adapters() == [second.key]
    assert await held_by_library(engine) == {second.key}
    await engine.unload_adapter(second.key)
    assert engine.resident_adapters() == []
    assert await held_by_library(engine) == set()
    assert "Paris" in await answer(engine, tokenizer)  # back to the base model alone


async def test_a_new_adapter_waits_while_every_resident_one_is_busy(clean, tokenizer, adapters):
    engine = clean
    first, second, third = adapters.first, adapters.second, adapters.first_again
    expected = [await answer(engine, tokenizer, adapter) for adapter in (first, second)]
    # Both slots busy when the third adapter's request comes: it waits for one to be free, and
    # no adapter is evicted under a request that uses it.
    together = await asyncio.gather(answer(engine, tokenizer, first), answer(engine, tokenizer, second),
                                    answer(engine, tokenizer, third), answer(engine, tokenizer))
    assert together[:3] == [expected[0], expected[1], expected[0]]
    assert "Paris" in together[3]
    assert len(engine.resident_adapters()) == MAX_LORAS and third.key in engine.resident_adapters()
    assert await held_by_library(engine) == set(engine.resident_adapters())
    assert engine.stats().running == 0


def broken_copy(adapters: Adapters, name: str, config: dict | None = None, weights: bytes | None = None) -> Path:
    folder = adapters.folder / name
    if not folder.exists():
        shutil.copytree(adapters.first.path, folder)
        if config is not None:
            path = folder / "adapter_config.json"
            path.write_text(json.dumps(json.loads(path.read_text()) | config))
        if weights is not None:
            (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


async def test_a_broken_adapter_fails_clearly_and_the_engine_keeps_serving(clean, tokenizer, adapters):
    engine = clean
    base = await answer(engine, tokenizer)
    cases = {
        "missing": (LoraAdapter("gone@v1", adapters.folder / "nowhere"), "no adapter_config.json"),
        "rank": (LoraAdapter("wide@v1", broken_copy(adapters, "rank-64", {"r": 64})), "rank 64, above"),
        "kind": (LoraAdapter("prefix@v1", broken_copy(adapters, "prefix", {"peft_type": "PREFIX_TUNING"})),
                 "not a LoRA adapter"),
        "corrupt": (LoraAdapter("corrupt@v1", broken_copy(adapters, "corrupt", weights=b"\x00" * 64)), "did not load"),
    }
    for adapter, message in cases.values():
        with pytest.raises(EngineError, match=message):
            await engine.load_adapter(adapter)
        with pytest.raises(EngineError, match=message):
            await answer(engine, tokenizer, adapter)
        assert engine.resident_adapters() == []
    await engine.check_health()
    assert await answer(engine, tokenizer) == base
    # the failed first adapter left nothing behind for the next one
    assert await answer(engine, tokenizer, adapters.first) != base
    assert engine.stats().running == 0


async def test_an_adapter_request_where_lora_is_off_is_refused(engine, model_folder, tokenizer, adapters):
    if engine.name.startswith("vllm"):
        # The refusal comes before vLLM is asked (a second vLLM start-up would double this file's time).
        from models.vllm_engine import VLLMEngine, engine_arguments

        off: Engine = VLLMEngine(lora_options(model_folder, max_lora_rank=0))
        assert "enable_lora" not in engine_arguments(off._options, gpu=False)
    else:
        off = TransformersEngine(lora_options(model_folder, max_lora_rank=0))
        await off.start()
    try:
        with pytest.raises(EngineError, match=r"started without LoRA \(max_lora_rank 0\)"):
            await answer(off, tokenizer, adapters.first)
        with pytest.raises(EngineError, match="without LoRA"):
            await off.load_adapter(adapters.first)
        assert off.resident_adapters() == []
        if not engine.name.startswith("vllm"):
            assert "Paris" in await answer(off, tokenizer)  # base requests are served as before
    finally:
        await off.shutdown()


def test_vllm_lora_arguments_round_the_rank_up():
    from models.vllm_engine import engine_arguments, vllm_lora_rank

    assert [vllm_lora_rank(rank) for rank in (1, 2, 8, 9, 16, 17, 300, 320, 321, 512)] == \
        [1, 8, 8, 16, 16, 32, 320, 320, 512, 512]
    options = EngineOptions(model_path=Path("/m"), max_model_len=64, max_lora_rank=12, max_loras=3)
    on_gpu = engine_arguments(options, gpu=True)
    assert (on_gpu["enable_lora"], on_gpu["max_lora_rank"], on_gpu["max_loras"], on_gpu["max_cpu_loras"]) == \
        (True, 16, 3, 3)
    on_cpu = engine_arguments(options, gpu=False)  # one spare slot that never holds an adapter
    assert (on_cpu["max_lora_rank"], on_cpu["max_loras"], on_cpu["max_cpu_loras"]) == (16, 4, 4)
    assert "enable_lora" not in engine_arguments(EngineOptions(model_path=Path("/m"), max_model_len=64), gpu=True)


def test_the_catalog_sets_the_lora_options():
    from config.catalog import InHouseModelSpec
    from models.engine_choice import engine_options

    default = engine_options(InHouseModelSpec(source="x"), Path("/m"))
    assert (default.max_lora_rank, default.max_loras) == (16, 4)
    off = engine_options(InHouseModelSpec(source="x", max_lora_rank=0, max_loras=9), Path("/m"))
    assert (off.max_lora_rank, off.max_loras) == (0, 9)
