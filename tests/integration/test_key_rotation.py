"""Secret rotation on the running gateway: `neuroapi secrets rotate-pepper` and then
`rotate-envelope`, run as an operator runs them, while clients keep calling. No request may
fail, and keys first used after the rotation must verify under the new pepper."""

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from ray import serve

from actors.keys.store import key_record_key
from tests.support.gateway_client import mint_key

NEUROAPI = Path(sys.executable).parent / "neuroapi"  # the installed console script
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "rotate"}]}


async def neuroapi(gateway, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(NEUROAPI), *args, "--config", str(gateway.config_path),
        env={**os.environ, **gateway.environ},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, output.decode()


def own_address() -> dict[str, str]:
    """A caller address of this test's own (a documentation address), so failed attempts of
    other tests from loopback never throttle it."""
    return {"X-Forwarded-For": f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"}


def prefix_of(key: str) -> str:
    return key.rsplit("_", 1)[0]


async def test_rotating_pepper_and_envelope_under_traffic_drops_no_request(gateway, upstreams):
    keys = [await mint_key(gateway) for _ in range(20)]
    in_use, unused = keys[:10], keys[10:]  # the second half is first used after the rotation
    statuses: list[int] = []
    verified: list[bool] = []
    stop = asyncio.Event()

    async def clients(worker: int) -> None:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=own_address()) as http:
            i = worker
            while not stop.is_set():
                key = in_use[i % len(in_use)]
                response = await http.post("/v1/chat/completions", json=BODY,
                                           headers={"Authorization": f"Bearer {key}"})
                statuses.append(response.status_code)
                i += 1

    async def verifier_calls() -> None:
        # The ingress caches verified keys, so HTTP traffic alone rarely reaches the verifier
        # pool: call it directly too, with every key in use, the whole time.
        verifier = serve.get_deployment_handle("KeyVerifier", app_name="neuroapi")
        i = 0
        while not stop.is_set():
            verified.append(await verifier.verify.remote(in_use[i % len(in_use)]) is not None)
            i += 1

    traffic = [asyncio.create_task(clients(w)) for w in range(3)] + [asyncio.create_task(verifier_calls())]
    try:
        await asyncio.sleep(1.0)
        pepper = await neuroapi(gateway, "secrets", "rotate-pepper")
        envelope = await neuroapi(gateway, "secrets", "rotate-envelope")
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*traffic)

    assert pepper[0] == 0, pepper[1]
    assert envelope[0] == 0, envelope[1]
    assert "0 left on older versions" in pepper[1] and "0 left on older versions" in envelope[1]
    secrets_file = json.loads(Path(gateway.environ["NEUROAPI_SECRETS_FILE"]).read_text())
    pepper_version = max(int(v) for v in secrets_file["peppers"])
    envelope_version = max(int(v) for v in secrets_file["envelope_keys"])
    assert f"pepper v{pepper_version} is current" in pepper[1] and pepper_version >= 2
    assert f"envelope v{envelope_version} is current" in envelope[1] and envelope_version >= 2
    material = [*secrets_file["peppers"].values(), *secrets_file["envelope_keys"].values(), *keys]
    assert not any(value in pepper[1] + envelope[1] for value in material)

    assert statuses and verified
    assert [s for s in statuses if s != 200] == []
    assert all(verified)

    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    try:
        for key in keys:
            record = await redis.hgetall(key_record_key(prefix_of(key)))
            assert (record["pepper_version"], record["envelope_version"]) == (
                str(pepper_version), str(envelope_version))
    finally:
        await redis.aclose()

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=own_address()) as http:
        for key in unused:  # not in any cache: the verifier checks them under the new pepper
            response = await http.post("/v1/chat/completions", json=BODY,
                                       headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
