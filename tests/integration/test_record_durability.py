"""Call records on the real gateway are exact and durable: an error record counts the bytes the
caller received, and killing an ingress replica (``kill -9``) right after it answered loses no
record (its write-ahead log is replayed by the metadata batcher)."""

import asyncio
import os
import signal
import time

import httpx
import psutil

from serve_app.runtime import APP_NAME
from tests.support.gateway_client import records_for


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_error_records_the_bytes_the_caller_received(client, gateway, api_key):
    chat = "/v1/chat/completions"
    responses = [
        await client.post(chat, json={"model": "gpt-4o-mini", "messages": []}, headers=bearer(api_key)),
        await client.post(chat, json={"model": "gpt-4o-mini", "max_tokens": "10",
                                      "messages": [{"role": "user", "content": "hi"}]}, headers=bearer(api_key)),
        await client.post(chat, json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]}),
        await client.post(chat, json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
                          headers=bearer(api_key)),
        await client.get("/v1/models"),
    ]
    assert [r.status_code for r in responses] == [400, 400, 401, 404, 401]
    assert responses[1].json()["error"]["param"] == "max_tokens"  # a string is not a number
    records = await records_for(gateway, [r.headers["x-request-id"] for r in responses])
    for response in responses:
        record = records[response.headers["x-request-id"]]
        assert (record["status"], int(record["response_bytes"])) == (str(response.status_code), len(response.content))


def ingress_replicas() -> list[int]:
    """The pids of the Ingress replicas of the gateway this test process started (Ray titles
    them ``ray::ServeReplica:neuroapi:Ingress``); nobody else's processes."""
    marker = f"ServeReplica:{APP_NAME}:Ingress"
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if marker in cmdline and cmdline.split(marker, 1)[1][:1] in ("", " "):
            pids.append(process.pid)
    return pids


async def test_a_killed_ingress_replica_loses_no_record(client, gateway, api_key):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    replicas = ingress_replicas()
    assert len(replicas) >= 2
    responses = await asyncio.gather(*[client.post("/v1/chat/completions", json=body, headers=bearer(api_key))
                                       for _ in range(50)])
    # At once: the replica's last records (up to 0.2 s of them) are not shipped yet.
    os.kill(replicas[0], signal.SIGKILL)
    assert all(r.status_code == 200 for r in responses)
    ids = [r.headers["x-request-id"] for r in responses]
    records = await records_for(gateway, ids, timeout_s=60)
    assert sorted(records) == sorted(ids)
    assert {r["status"] for r in records.values()} == {"200"}

    # Serve replaces the replica; leave the gateway whole for the tests after this one.
    deadline = time.monotonic() + 120
    while len(ingress_replicas()) < len(replicas) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        assert (await http.get("/healthz")).status_code == 200
