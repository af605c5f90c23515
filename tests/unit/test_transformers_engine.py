"""The transformers fallback engine on the real built-in model (SmolLM2-135M-Instruct, CPU).

One engine for the module; the converted model folder is reused from NEUROAPI_MODEL_CACHE_DIR
when set (converting the GGUF takes about 40 s)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from models.decoding import Decoder, first_stop, pick_token, stop_prefix_length  # noqa: E402
from models.engine import Delta, EngineError, EngineOptions, Sampling  # noqa: E402
from models.openai_format import prompt_token_ids  # noqa: E402
from models.transformers_engine import TransformersEngine  # noqa: E402

FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def model_folder(embedded_model) -> Path:
    return embedded_model


@pytest.fixture(scope="module")
def tokenizer(embedded_tokenizer):
    return embedded_tokenizer


@pytest.fixture(scope="module")
async def engine(model_folder):
    engine = TransformersEngine(EngineOptions(model_path=model_folder, max_model_len=2048))
    await engine.start()
    yield engine
    await engine.shutdown()


def ids_for(tokenizer, question: str) -> list[int]:
    return prompt_token_ids(tokenizer, [{"role": "user", "content": question}])


async def collect(engine, tokenizer, question: str, sampling: Sampling, request_id: str = "r") -> list[Delta]:
    return [delta async for delta in engine.generate(request_id, ids_for(tokenizer, question), sampling)]


def text_of(deltas: list[Delta]) -> str:
    return "".join(delta.text for delta in deltas)


def test_stop_string_helpers():
    assert stop_prefix_length("1, 2, 3,", (", 4",)) == 1
    assert stop_prefix_length("1, 2, 3, ", (", 4",)) == 2
    assert stop_prefix_length("1, 2, 3", (", 4",)) == 0
    assert stop_prefix_length("abc", ("xyz", "bcd")) == 2
    assert first_stop("a STOP b END", ("END", "STOP")) == 2
    assert first_stop("abc", ("x",)) == -1


def test_penalties_and_top_p():
    import torch


    logits = torch.tensor([3.0, 2.5, 0.0, -1.0])
    counts = torch.tensor([2.0, 0.0, 0.0, 0.0])

    def pick(**fields) -> int:
        decoder = Decoder(Sampling(max_tokens=1, **fields), torch.Generator().manual_seed(0), counts=counts)
        return pick_token(decoder, logits)

    assert pick(temperature=0) == 0
    assert pick(temperature=0, frequency_penalty=0.3) == 1  # 3.0 - 0.3 * 2 < 2.5
    assert pick(temperature=0, presence_penalty=0.3) == 0  # 3.0 - 0.3 > 2.5
    assert pick(temperature=0, presence_penalty=0.6) == 1
    # top_p this small keeps only the most likely token, whatever the generator draws
    assert {pick(temperature=5.0, top_p=0.01, seed=None) for _ in range(20)} == {0}


async def test_greedy_answer_then_length_limit(engine, tokenizer):
    deltas = await collect(engine, tokenizer, FRANCE, Sampling(max_tokens=64, temperature=0))
    assert "Paris" in text_of(deltas)
    assert deltas[-1].finish_reason == "stop"
    assert all(delta.finish_reason is None for delta in deltas[:-1])
    counts = [delta.completion_tokens for delta in deltas]
    assert counts == sorted(counts) and counts[-1] < 64

    short = await collect(engine, tokenizer, FRANCE, Sampling(max_tokens=5, temperature=0))
    assert short[-1].finish_reason == "length"
    assert short[-1].completion_tokens == 5
    assert text_of(deltas).startswith(text_of(short))  # the same greedy path, cut after 5 tokens


async def test_seed_makes_sampling_repeatable(engine, tokenizer):
    question = "Write a short poem about the sea."

    async def sample(seed: int) -> str:
        return text_of(await collect(engine, tokenizer, question,
                                     Sampling(max_tokens=30, temperature=1.0, seed=seed)))

    first, again, other = await sample(7), await sample(7), await sample(8)
    assert first == again
    assert first != other


async def test_stop_string_is_never_emitted(engine, tokenizer):
    question = "Count from 1 to 10, separated by commas."
    deltas = await collect(engine, tokenizer, question, Sampling(max_tokens=40, temperature=0, stop=(", 4",)))
    # Greedy, the model writes "1, 2, 3, 4, ...": the "," before the stop string is held back
    # while it could still begin one, and never sent.
    assert text_of(deltas) == "1, 2, 3"
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].completion_tokens < 40


async def test_closing_the_stream_aborts_the_request(engine, tokenizer):
    before = engine.stats()
    stream = engine.generate("closed", ids_for(tokenizer, "Tell me a long story about a dragon."),
                             Sampling(max_tokens=200, temperature=0))
    for _ in range(3):
        assert (await anext(stream)).finish_reason is None
    assert engine.stats().running == 1
    await stream.aclose()
    after = engine.stats()
    assert after.aborted == before.aborted + 1
    assert after.finished == before.finished
    assert after.running == 0

    deltas = await collect(engine, tokenizer, FRANCE, Sampling(max_tokens=64, temperature=0))
    assert "Paris" in text_of(deltas) and deltas[-1].finish_reason == "stop"


async def test_abort_from_another_task_stops_generation(engine, tokenizer):
    before = engine.stats()
    first_delta = asyncio.Event()
    deltas: list[Delta] = []

    async def consume() -> None:
        async for delta in engine.generate("aborted", ids_for(tokenizer, "Tell me a long story about a dragon."),
                                           Sampling(max_tokens=200, temperature=0)):
            deltas.append(delta)
            first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), timeout=30)
    await engine.abort("aborted")
    await asyncio.wait_for(task, timeout=30)
    assert deltas and deltas[-1].finish_reason is None  # it ended without finishing
    assert deltas[-1].completion_tokens < 20
    after = engine.stats()
    assert after.aborted == before.aborted + 1 and after.running == 0
    await engine.abort("aborted")  # idempotent, and unknown ids are ignored
    await engine.abort("never-seen")


async def test_health_and_errors(engine, model_folder):
    await engine.check_health()
    idle = TransformersEngine(EngineOptions(model_path=model_folder, max_model_len=2048))
    with pytest.raises(EngineError):
        await idle.check_health()
    missing = TransformersEngine(EngineOptions(model_path=model_folder / "missing", max_model_len=2048))
    with pytest.raises(EngineError, match="missing"):
        await missing.start()
    with pytest.raises(EngineError, match="max_model_len"):
        async for _ in engine.generate("too-long", [1] * 2000, Sampling(max_tokens=100)):
            pass
    assert engine.stats().running == 0
