"""No log holds a secret or a prompt, on any path: the real gateway is driven through success,
rejected keys, upstream failures and an exception inside a deployment, each call carrying a
full key, a session token and a canary prompt; then every file Ray's session wrote, the
gateway's data dir and Redis's folder are searched for them (and the logs for the provider
credentials and key material). The key's public prefix, on the other hand, must be in the line
the ingress writes when it rejects a key (for support)."""

import asyncio
import base64
import json
import secrets
import time
from pathlib import Path

import ray
import redis.asyncio as aioredis

from actors.keys.crypto import KeyCrypto
from actors.keys.store import KeyStore, key_record_key
from config.secrets import load_key_material
from config.settings import load_settings
from core.key_format import _checksum, parse_key
from tests.support.gateway_client import mint_key
from tests.support.leak_scan import scan_files
from tests.support.upstreams import CREDENTIALS, Behaviour


async def revoke(gateway, key: str) -> None:
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    material, _ = load_key_material(load_settings(gateway.config_path))
    try:
        await KeyStore(redis, KeyCrypto(material)).revoke(parse_key(key).prefix)
    finally:
        await redis.aclose()


def wrong_secret_for(key: str) -> str:
    """Same public prefix, another secret with a valid checksum: it reaches the verifier."""
    body = f"{parse_key(key).prefix}_{secrets.token_hex(16)}"
    return body + _checksum(body)


def session_logs() -> Path:
    return Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"


def lines_with(folder: Path, needle: str) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                found += [line for line in path.read_text(errors="replace").splitlines() if needle in line]
        except OSError:
            continue
    return found


async def wait_for_lines(folder: Path, needles: list[str], timeout_s: float = 60.0) -> None:
    """Until each needle is in some line on disk: the replicas have flushed what they logged."""
    deadline = time.monotonic() + timeout_s
    missing = needles
    while missing:
        missing = [n for n in missing if not lines_with(folder, n)]
        if missing and time.monotonic() > deadline:
            raise AssertionError(f"never logged: {missing}")
        await asyncio.sleep(0.5)


async def test_no_log_holds_a_key_a_session_token_or_a_prompt(gateway, client, api_key, upstreams):
    canary = "CANARY-" + secrets.token_hex(8)
    session_token = f"nsess_{secrets.token_urlsafe(24)}.{secrets.token_urlsafe(32)}"
    revoked = await mint_key(gateway)
    wrong = wrong_secret_for(api_key)
    typo = api_key[:-1] + ("A" if api_key[-1] != "A" else "B")  # the checksum no longer matches
    messages = [
        {"role": "system", "content": f"system {canary}"},
        # A user pasting secrets into a prompt: they must not reach a log from there either.
        {"role": "user", "content": f"say {canary} with {api_key} and {session_token}"},
    ]

    def headers(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "Cookie": f"theme=dark; nsess={session_token}",
                "X-Request-Id": f"{canary}-{session_token}"}

    async def chat(key: str, model: str, stream: bool = False) -> tuple[int, str]:
        response = await client.post("/v1/chat/completions", headers=headers(key),
                                     json={"model": model, "messages": messages, "stream": stream})
        return response.status_code, response.text

    assert (await chat(revoked, "gpt-4o-mini"))[0] == 200  # now cached by an ingress replica
    await revoke(gateway, revoked)
    upstreams.script("gpt-4o-mini", Behaviour(status=500), Behaviour(mid_stream_error=True),
                     Behaviour(unparseable=True))
    upstreams.script("claude-haiku-4-5", Behaviour(), Behaviour(unparseable=True))
    statuses = [
        (await chat(wrong, "gpt-4o-mini"))[0],  # a wrong secret behind a real prefix
        (await chat(typo, "gpt-4o-mini"))[0],  # a typo: rejected before any lookup
        (await chat(revoked, "gpt-4o-mini"))[0],
        (await chat(api_key, "gpt-4o-mini"))[0],  # upstream 500
    ]
    status, streamed = await chat(api_key, "gpt-4o-mini", stream=True)  # fails mid-stream
    statuses.append(status)
    assert '"error"' in streamed and "Echo:" in streamed
    # An answer the adapter cannot read is a 502 ("unreadable"), streamed or not.
    statuses.append((await chat(api_key, "gpt-4o-mini"))[0])
    statuses.append((await chat(api_key, "claude-haiku-4-5", stream=True))[0])  # streams fine
    statuses.append((await chat(api_key, "claude-haiku-4-5", stream=True))[0])  # unparseable, streamed
    # An exception inside a deployment while a key and the prompt are in play: a corrupt key
    # record makes the verifier raise (ValueError), Serve logs the traceback, the caller gets 500.
    broken = await mint_key(gateway)
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    await redis.hset(key_record_key(parse_key(broken).prefix), "pepper_version", "not-a-version")
    await redis.aclose()
    statuses.append((await chat(broken, "gpt-4o-mini"))[0])
    models = await client.get("/v1/models", headers={"x-api-key": api_key, "Cookie": f"nsess={session_token}"})
    statuses.append(models.status_code)
    assert statuses == [401, 401, 401, 502, 200, 502, 200, 502, 500, 200]
    assert any(canary in json.dumps(r.body) for r in upstreams.requests)  # it did go through

    logs = session_logs()
    prefix, revoked_prefix = parse_key(api_key).prefix, parse_key(revoked).prefix
    # The prefix (and only the prefix) is logged where a key is rejected: support can find it.
    await wait_for_lines(logs, [f"key {prefix} rejected: ", f"key {revoked_prefix} rejected: ",
                                "upstream openai/gpt-4o-mini failed", "ValueError"])

    needles = {
        "key": parse_key(api_key).secret, "revoked key": parse_key(revoked).secret,
        "broken key": parse_key(broken).secret,
        "wrong key": parse_key(wrong).secret, "typo'd key": typo.rsplit("_", 1)[1],
        "canary": canary, "session token": session_token.removeprefix("nsess_"),
    }
    folders = [logs, gateway.data_dir, gateway.redis.folder]
    leaks = {name: scan_files(folders, needle) for name, needle in needles.items()}
    # The gateway's own secrets: provider credentials and key material (the data dir holds
    # the secrets file, so only the logs are searched for those).
    material, _ = load_key_material(load_settings(gateway.config_path))
    for provider, credential in CREDENTIALS.items():
        leaks[f"{provider} credential"] = scan_files([logs], credential)
    for version, pepper in material.peppers.items():
        leaks[f"pepper v{version}"] = scan_files([logs], base64.urlsafe_b64encode(pepper).decode()[:40])
    for version, envelope_key in material.envelope_keys.items():
        leaks[f"envelope key v{version}"] = scan_files([logs], envelope_key.decode()[:40])
    assert {name: found for name, found in leaks.items() if found} == {}
