"""In-house models through the real ingress: the real default model (SmolLM2-135M-Instruct) on
vLLM's CPU build, and the same weights on the transformers engine, on real Ray Serve.

Real inference, not a canned reply: the greedy answer is checked for its content, usage is
checked against the model's own tokenizer, a caller who leaves aborts the generation in the
engine, a full model answers 503 + Retry-After, and an oversized request gets a clear 400."""

import asyncio
import json
from decimal import Decimal

import httpx
import pytest
from openai import AsyncOpenAI
from ray import serve
from transformers import AutoTokenizer

from config.settings import load_settings
from models.engine_choice import engine_kind
from models.model_source import resolve
from models.openai_format import prompt_token_ids
from serve_app.runtime import APP_NAME
from tests.conftest import TIGHT_MODEL
from tests.support.gateway_client import records_for

DEFAULT_MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tokenizer(gateway):
    settings = load_settings(gateway.config_path)
    folder = resolve(settings.in_house_models[DEFAULT_MODEL].source, settings.models_dir)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.fixture
def sdk(gateway, api_key):
    return AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0, timeout=120)


async def engine_stats(model: str):
    return await serve.get_deployment_handle(f"Model-{model}", app_name=APP_NAME).stats.remote()


async def test_models_lists_the_in_house_models_with_the_engine_serving_each(client, api_key):
    listed = {m["id"]: m for m in (await client.get("/v1/models", headers={"Authorization": f"Bearer {api_key}"})).json()["data"]}
    expected = "vllm-cpu" if engine_kind("auto") == "vllm" else "transformers"
    assert listed[DEFAULT_MODEL] | {"engine": expected} == listed[DEFAULT_MODEL]
    assert listed[DEFAULT_MODEL]["in_house"] is True and listed[DEFAULT_MODEL]["owned_by"] == "inhouse"
    assert listed[TIGHT_MODEL]["engine"] == "transformers"
    assert "private" in listed


@pytest.mark.parametrize("model", ["private", TIGHT_MODEL])
async def test_the_real_model_answers_through_the_openai_sdk_with_the_tokenizers_counts(sdk, tokenizer, model):
    answer = await sdk.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=40)
    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == len(prompt_token_ids(tokenizer, FRANCE))
    assert 0 < answer.usage.completion_tokens < 40
    expected_engine = "transformers" if model == TIGHT_MODEL else ("vllm-cpu" if engine_kind("auto") == "vllm" else "transformers")
    assert answer.system_fingerprint == expected_engine

    cut = await sdk.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    assert answer.choices[0].message.content.startswith(cut.choices[0].message.content)


async def test_a_stream_carries_the_same_greedy_answer_and_usage(sdk, tokenizer):
    whole = await sdk.chat.completions.create(model=DEFAULT_MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    stream = await sdk.chat.completions.create(model=DEFAULT_MODEL, messages=FRANCE, temperature=0, max_tokens=40,
                                               stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, roles = [], None, None, []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            roles += [choice.delta.role] if choice.delta.role else []
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert roles == ["assistant"]
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)


async def test_sampling_parameters_are_honoured(sdk):
    async def sample(seed: int) -> str:
        answer = await sdk.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Write a short poem about the sea."}],
            temperature=1.0, top_p=0.95, seed=seed, max_tokens=24)
        return answer.choices[0].message.content

    first, again, other = await sample(7), await sample(7), await sample(8)
    assert first == again  # the same seed, the same sample
    assert first != other
    counting = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = await sdk.chat.completions.create(model=DEFAULT_MODEL, messages=counting, temperature=0, max_tokens=40)
    assert "5" in full.choices[0].message.content
    stopped = await sdk.chat.completions.create(model=DEFAULT_MODEL, messages=counting, temperature=0,
                                                max_tokens=40, stop=["5"])
    assert stopped.choices[0].finish_reason == "stop"
    assert "5" not in stopped.choices[0].message.content
    assert full.choices[0].message.content.startswith(stopped.choices[0].message.content)


async def test_a_request_over_the_context_length_is_a_clear_400(client, api_key):
    headers = {"Authorization": f"Bearer {api_key}"}
    too_many = await client.post("/v1/chat/completions", headers=headers, json={
        "model": DEFAULT_MODEL, "messages": FRANCE, "max_tokens": 2040})
    long_prompt = await client.post("/v1/chat/completions", headers=headers, json={
        "model": DEFAULT_MODEL, "stream": True, "messages": [{"role": "user", "content": "word " * 3000}]})
    for response in (too_many, long_prompt):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["type"], error["param"]) == (
            "context_length_exceeded", "invalid_request_error", "messages")
        assert "maximum context length is 2048 tokens" in error["message"]
    assert "+ 2040 for the completion" in too_many.json()["error"]["message"]
    assert "word" not in long_prompt.text  # the error does not echo the prompt


async def test_a_caller_who_leaves_aborts_the_generation_in_the_engine(gateway, api_key, sdk):
    before = await engine_stats(DEFAULT_MODEL)
    body = {"model": DEFAULT_MODEL, "stream": True, "max_tokens": 1500, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Tell me a very long story about a dragon."}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {api_key}"}) as response:
            assert response.status_code == 200
            events = 0
            async for line in response.aiter_lines():
                events += line.startswith("data: ")
                if events >= 5:
                    break  # hang up mid-answer
    for _ in range(100):
        stats = await engine_stats(DEFAULT_MODEL)
        if stats.aborted > before.aborted and stats.running == 0:
            break
        await asyncio.sleep(0.1)
    assert stats.aborted == before.aborted + 1  # the engine dropped it ...
    assert stats.running == 0  # ... and holds nothing: no stray generation slows the next caller
    after = await sdk.chat.completions.create(model=DEFAULT_MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    assert "Paris" in after.choices[0].message.content
    assert (await engine_stats(DEFAULT_MODEL)).finished == stats.finished + 1


async def test_a_full_model_answers_503_with_retry_after_and_never_piles_up(gateway, api_key):
    """TIGHT_MODEL runs one call at a time and lets one wait per ingress replica (Serve's queue
    is per caller); the rest are refused at once, and the waiting ones are served later."""
    before = await engine_stats(TIGHT_MODEL)
    # Nearly uniform sampling (temperature 2, a fixed seed): the story never ends on its own.
    story = {"model": TIGHT_MODEL, "stream": True, "max_tokens": 1500, "temperature": 2.0, "seed": 0,
             "messages": [{"role": "user", "content": "Tell me a very long story."}]}
    short = {"model": TIGHT_MODEL, "max_tokens": 4, "messages": FRANCE}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120,
                                 headers={"Authorization": f"Bearer {api_key}"}) as http:
        async with http.stream("POST", "/v1/chat/completions", json=story) as running:
            assert running.status_code == 200
            story_lines = running.aiter_lines()  # held: dropping it would hang up
            await anext(story_lines)  # generating now: the replica is full
            calls = []
            for _ in range(6):  # spaced: Serve's queue counter refuses early in a same-instant burst
                calls.append(asyncio.create_task(http.post("/v1/chat/completions", json=short)))
                await asyncio.sleep(0.5)
            answered, waiting = await asyncio.wait(calls, timeout=3)
        # The story's caller hung up: its slot frees and the waiting calls run.
        later = await asyncio.gather(*waiting)
    assert (await engine_stats(TIGHT_MODEL)).aborted == before.aborted + 1  # the story held the slot throughout
    refused = [task.result() for task in answered]
    queue_bound = load_settings(gateway.config_path).ingress_replicas * 1  # max_queued: 1
    assert 1 <= len(waiting) <= queue_bound
    assert len(refused) == 6 - len(waiting)
    for response in refused:
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 1
        error = response.json()["error"]
        assert (error["code"], error["type"]) == ("model_overloaded", "server_error")
    assert [r.status_code for r in later] == [200] * len(waiting)


async def test_in_house_calls_are_metered_and_priced(gateway, client, api_key):
    response = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                                 json={"model": "private", "messages": FRANCE, "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200
    usage = json.loads(response.content, parse_float=Decimal)["usage"]
    price = load_settings(gateway.config_path).prices[DEFAULT_MODEL]
    expected = (price.input * usage["prompt_tokens"] + price.output * usage["completion_tokens"]) / 1_000_000
    assert usage["cost_units"] == expected > 0
    assert Decimal(response.headers["X-NeuroAPI-Cost-Units"]) == expected
    record = (await records_for(gateway, [response.headers["x-request-id"]]))[response.headers["x-request-id"]]
    assert (record["backend"], record["model"], record["mode"]) == ("inhouse", DEFAULT_MODEL, "private")
    assert int(record["prompt_tokens"]) == usage["prompt_tokens"]
    assert int(record["completion_tokens"]) == usage["completion_tokens"]
    assert Decimal(record["cost_micro_units"]) == expected * 1_000_000
