"""POST /v1/embeddings on the session's real gateway (Ray Serve, Redis, the fake OpenAI upstream and
the real in-house embedding model): the exact price in the answer, its header and the call record;
scopes as on chat; embedding and chat models kept apart; the model list; and embedding inputs
retained nowhere."""

import base64
import json
import secrets
from pathlib import Path

import numpy
import pytest
import ray

from config.settings import load_settings
from models.model_source import resolve
from tests.support.gateway_client import account_with_key, bearer, records_for, set_scope
from tests.support.leak_scan import scan_files, scan_redis
from tests.support.upstreams import fake_embedding

SMALL, IN_HOUSE = "text-embedding-3-small", "smollm2-135m-embed"


async def embed(client, key: str, **body):
    return await client.post("/v1/embeddings", headers=bearer(key), json=body)


def vectors(answer: dict) -> numpy.ndarray:
    return numpy.array([d["embedding"] if isinstance(d["embedding"], list)
                        else numpy.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in answer["data"]],
                       numpy.float32)


async def test_an_openai_model_embeds_at_its_exact_price_metered_once(client, api_key, gateway, upstreams):
    texts = ["the quick brown fox", "jumps"]
    response = await embed(client, api_key, model=SMALL, input=texts, dimensions=512)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["object"], answer["model"], len(answer["data"])) == ("list", SMALL, 2)
    expected = numpy.stack([fake_embedding(SMALL, text, 512) for text in texts])
    assert vectors(answer).tobytes() == expected.tobytes()  # the provider's float32 values, exactly
    # 5 tokens at US$0.02 per million: 5 x 20000 micro cost_units = 0.1 cost_units.
    assert answer["usage"] == {"prompt_tokens": 5, "total_tokens": 5, "cost_units": 0.1}
    assert response.headers["x-neuroapi-cost-units"] == "0.1"
    assert upstreams.requests[-1].body["encoding_format"] == "base64"
    request_id = response.headers["x-request-id"]
    record = (await records_for(gateway, [request_id]))[request_id]
    assert (record["status"], record["backend"], record["model"], record["cost_micro_units"]) == (
        "200", "openai", SMALL, "100000")
    assert (record["prompt_tokens"], record["completion_tokens"]) == ("5", "0")
    assert record["response_bytes"] == str(len(response.content))


@pytest.fixture(scope="module")
def definition(gateway):
    """The embedding as defined, computed here with plain transformers: the base model's last hidden
    state over the unpadded input, averaged, L2-normalised; and the tokenizer's count."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    settings = load_settings(gateway.config_path)
    folder = resolve(settings.in_house_models[IN_HOUSE].source, settings.models_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()

    def embed(text: str) -> tuple[numpy.ndarray, int]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            mean = model(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(dim=0)
        return (mean / mean.norm()).numpy(), len(ids)

    return embed


async def test_the_in_house_model_embeds_on_the_gateways_own_replicas(client, api_key, upstreams, definition):
    texts = ["Paris is in France.", "hello"]
    floats = await embed(client, api_key, model=IN_HOUSE, input=texts)
    assert floats.status_code == 200, floats.text
    answer = floats.json()
    rows = vectors(answer)
    expected = [definition(text) for text in texts]
    assert rows.shape == (2, 576)  # vLLM's pooling runner (or transformers) computes the definition
    assert numpy.allclose(rows, numpy.stack([vector for vector, _ in expected]), atol=1e-5)
    tokens = sum(count for _, count in expected)
    assert answer["usage"]["prompt_tokens"] == tokens
    assert answer["usage"]["cost_units"] == pytest.approx(tokens * 0.01)  # 10000 cost_units per million
    short = (await embed(client, api_key, model=IN_HOUSE, input="hello", encoding_format="base64",
                         dimensions=64)).json()
    head = rows[1][:64] / numpy.linalg.norm(rows[1][:64])
    assert numpy.allclose(vectors(short)[0], head, atol=1e-6)
    assert upstreams.requests == []  # nothing left the gateway


async def test_scopes_apply_as_on_chat(client, gateway, upstreams):
    email, key = await account_with_key(client)
    await set_scope(client, gateway, email, in_house_only=True)
    refused = await embed(client, key, model=SMALL, input="hello")
    chat = await client.post("/v1/chat/completions", headers=bearer(key),
                             json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == chat.status_code == 403
    assert refused.json()["error"]["code"] == chat.json()["error"]["code"] == "scope_forbids"
    assert upstreams.requests == []
    assert (await embed(client, key, model=IN_HOUSE, input="hello")).status_code == 200


async def test_embedding_and_chat_models_are_kept_apart_and_listed(client, api_key, upstreams):
    chat = await client.post("/v1/chat/completions", headers=bearer(api_key),
                             json={"model": SMALL, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "model_not_chat"
    wrong = await embed(client, api_key, model="gpt-4o-mini", input="hi")
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "model_not_embedding"
    assert upstreams.requests == []
    listed = {m["id"]: m for m in (await client.get("/v1/models", headers=bearer(api_key))).json()["data"]}
    assert listed[SMALL]["embeddings"] is True and listed[SMALL]["dimensions"] == 1536
    assert listed[IN_HOUSE]["embeddings"] is True and listed[IN_HOUSE]["in_house"] is True
    assert "embeddings" not in listed["gpt-4o-mini"]


async def test_embedding_inputs_are_retained_nowhere(client, api_key, gateway, upstreams, tmp_path_factory):
    canary = "CANARY-" + secrets.token_hex(8)
    calls = [
        ({"model": SMALL, "input": [f"remember {canary}", canary]}, 200),
        ({"model": IN_HOUSE, "input": f"in house {canary}", "encoding_format": "base64"}, 200),
        ({"model": SMALL, "input": f"{canary} " * 8200}, 400),  # OpenAI refuses it: over the context
        ({"model": IN_HOUSE, "input": f"{canary} " * 9000}, 400),  # the in-house model refuses it
        ({"model": canary, "input": canary}, 404),
        ({"model": SMALL, "input": canary, "dimensions": canary}, 400),
    ]
    ids = []
    for body, status in calls:
        response = await embed(client, api_key, **body)
        assert response.status_code == status, response.text
        ids.append(response.headers["x-request-id"])
    assert any(canary in json.dumps(r.body) for r in upstreams.requests)  # it did go through
    assert len(await records_for(gateway, ids)) == len(ids)  # every call metered
    assert scan_redis(gateway.redis.url, canary) == []
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())  # every replica's logs
    folders = [session_dir, tmp_path_factory.getbasetemp(), gateway.data_dir, gateway.redis.folder]
    assert scan_files(folders, canary) == []
