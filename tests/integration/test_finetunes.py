"""LoRA fine-tunes, as the ML team uses them, on the real gateway: real PEFT adapters for the
embedded model deployed with the CLI (and the admin API), served as ``ft:NAME`` on the running
vLLM replicas without a restart, rolled back, made private to an account, retired; and every
validation failure refused with nothing changed."""

import json
import os
import secrets
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from config.settings import load_settings
from models.model_source import resolve
from tests.support.gateway_client import account_with_key, bearer, records_for
from tests.support.lora import build_adapter

BASE = "smollm2-135m-instruct"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def adapters(gateway, tmp_path_factory):
    """Two real adapters (different seeds) for the embedded model."""
    settings = load_settings(gateway.config_path)
    base_folder = resolve(settings.in_house_models[BASE].source, settings.models_dir)
    folder = tmp_path_factory.mktemp("adapters")
    return [build_adapter(base_folder, folder / f"seed{seed}", seed=seed) for seed in (0, 1)]


def neuroapi(gateway, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "neuroapi"), *args, "--config", str(gateway.config_path)],
                          env={**os.environ, **gateway.environ}, capture_output=True, text=True, timeout=300)


def deploy(gateway, path: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return neuroapi(gateway, "finetunes", "deploy", str(path), "--base", BASE, "--name", name, *extra)


async def answer(client, key: str, model: str, stream: bool = False) -> tuple[int, str]:
    response = await client.post("/v1/chat/completions", headers=bearer(key), json={
        "model": model, "messages": PROMPT, "temperature": 0, "max_tokens": 24, "stream": stream})
    if response.status_code != 200:
        return response.status_code, response.json()["error"]["code"]
    if not stream:
        return 200, response.json()["choices"][0]["message"]["content"]
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    return 200, "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


async def test_deploy_serves_the_adapter_rollback_restores_the_previous_version(client, gateway, adapters):
    _, key = await account_with_key(client)
    name = f"support-{secrets.token_hex(3)}"
    base_before = await answer(client, key, BASE)

    first = deploy(gateway, adapters[0], name)
    assert first.returncode == 0, first.stderr
    assert f"{name}\tv1\tlive\tbase={BASE}" in first.stdout
    v1 = await answer(client, key, f"ft:{name}")
    assert v1[0] == 200 and v1 != base_before  # the adapter changes the greedy answer ...
    assert await answer(client, key, BASE) == base_before  # ... and the base model is untouched
    assert await answer(client, key, f"ft:{name}", stream=True) == v1

    assert deploy(gateway, adapters[1], name).returncode == 0
    v2 = await answer(client, key, f"ft:{name}")
    assert v2[0] == 200 and v2 != v1  # the next request already gets version 2

    rolled = neuroapi(gateway, "finetunes", "rollback", name)
    assert rolled.returncode == 0, rolled.stderr
    assert f"{name}\tv1\tlive" in rolled.stdout
    assert await answer(client, key, f"ft:{name}") == v1

    shown = neuroapi(gateway, "finetunes", "show", name).stdout.splitlines()
    assert [line.split("\t")[1:3] for line in shown] == [["v1", "live"], ["v2", "staged"]]

    retired = neuroapi(gateway, "finetunes", "retire", name)
    assert retired.returncode == 0, retired.stderr
    assert await answer(client, key, f"ft:{name}") == (404, "model_not_found")
    assert await answer(client, key, BASE) == base_before


async def test_an_account_private_finetune_is_404_for_everyone_else(client, gateway, adapters):
    owner_email, owner_key = await account_with_key(client)
    _, other_key = await account_with_key(client)
    name = f"private-{secrets.token_hex(3)}"
    result = deploy(gateway, adapters[0], name, "--account", owner_email)
    assert result.returncode == 0, result.stderr
    assert (await answer(client, owner_key, f"ft:{name}"))[0] == 200
    assert await answer(client, other_key, f"ft:{name}") == (404, "model_not_found")
    assert await answer(client, other_key, "ft:no-such-finetune") == (404, "model_not_found")  # the same answer


async def test_finetune_calls_are_metered_with_name_version_and_price(client, gateway, adapters):
    _, key = await account_with_key(client)
    name = f"metered-{secrets.token_hex(3)}"
    assert deploy(gateway, adapters[0], name).returncode == 0
    response = await client.post("/v1/chat/completions", headers=bearer(key), json={
        "model": f"ft:{name}", "messages": PROMPT, "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200
    usage = json.loads(response.content, parse_float=Decimal)["usage"]
    price = load_settings(gateway.config_path).prices[BASE]  # no price of its own: the base model's
    expected = (price.input * usage["prompt_tokens"] + price.output * usage["completion_tokens"]) / 1_000_000
    assert usage["cost_units"] == expected > 0
    request_id = response.headers["x-request-id"]
    record = (await records_for(gateway, [request_id]))[request_id]
    assert (record["model"], record["finetune"], record["backend"]) == (f"ft:{name}", f"{name}@v1", "inhouse")
    assert Decimal(record["cost_micro_units"]) == expected * 1_000_000


def corrupt(adapter: Path, folder: Path, change) -> Path:
    """A copy of ``adapter`` with one thing wrong."""
    copy = folder / secrets.token_hex(4)
    copy.mkdir()
    for item in adapter.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    change(copy)
    return copy


def set_config(**fields):
    def change(folder: Path) -> None:
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, **fields}))
    return change


async def test_a_bad_adapter_is_refused_with_what_and_where_and_nothing_changes(client, gateway, adapters, tmp_path):
    name = f"bad-{secrets.token_hex(3)}"
    cases = {
        "pickle": (corrupt(adapters[0], tmp_path, lambda f: (f / "adapter_model.bin").write_bytes(b"x")), "pickle"),
        "rank": (corrupt(adapters[0], tmp_path, set_config(r=64)), "rank"),
        "module": (corrupt(adapters[0], tmp_path, set_config(target_modules=["q_proj", "not_a_module"])), "not_a_module"),
    }
    for case, (path, words) in cases.items():
        result = deploy(gateway, path, name)
        assert result.returncode != 0, case
        assert words in result.stderr.lower() and "not deployed" in result.stderr, (case, result.stderr)
    wrong_base = neuroapi(gateway, "finetunes", "deploy", str(adapters[0]), "--base", "gpt-4o-mini", "--name", name)
    assert wrong_base.returncode != 0 and "not an in-house model" in wrong_base.stderr
    assert neuroapi(gateway, "finetunes", "show", name).returncode != 0  # nothing was registered
    _, key = await account_with_key(client)
    assert await answer(client, key, f"ft:{name}") == (404, "model_not_found")

    admin = bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"])
    refused = await client.post("/v1/admin/finetunes", headers=admin, json={
        "path": str(cases["rank"][0]), "base": BASE, "name": name})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_finetune"
    deployed = await client.post("/v1/admin/finetunes", headers=admin, json={
        "path": str(adapters[1]), "base": BASE, "name": name})
    assert deployed.status_code == 201, deployed.text
    assert (deployed.json()["version"], deployed.json()["state"]) == (1, "live")
    assert (await answer(client, key, f"ft:{name}"))[0] == 200
    assert (await client.delete(f"/v1/admin/finetunes/{name}", headers=admin)).json()["state"] == "retired"
    assert await answer(client, key, f"ft:{name}") == (404, "model_not_found")
    assert (await client.post("/v1/admin/finetunes", headers={"Authorization": "Bearer nope"}, json={})).status_code == 401


async def test_a_mode_that_names_a_finetune_serves_it_once_deployed(client, gateway, adapters):
    """The test catalog's mode "support": ft:mode-support first, the base model as fallback."""
    _, key = await account_with_key(client)
    base = await answer(client, key, BASE)
    assert await answer(client, key, "support") == base  # not deployed yet: the fallback serves
    assert deploy(gateway, adapters[0], "mode-support").returncode == 0
    tuned = await answer(client, key, "ft:mode-support")
    assert tuned != base and await answer(client, key, "support") == tuned
    assert neuroapi(gateway, "finetunes", "retire", "mode-support").returncode == 0
    assert await answer(client, key, "support", stream=True) == base
