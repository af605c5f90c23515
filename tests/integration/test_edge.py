"""The edge every caller meets, on real Ray Serve (issue 13 items 1, 3, 4): Serve's HAProxy as
``serve_app.haproxy_edge`` edits it.

The session gateway trusts 127.0.0.1 (the tests play the edge load balancer). An untrusted caller
connects from another loopback address (Linux routes all of 127/8 to this host), as any client of
a default ``neuroapi serve`` with no ``trusted_proxies`` does."""

from __future__ import annotations

import glob
import ipaddress
import os
import random
import secrets
import socket
import stat
import time
import urllib.request

import httpx
import redis.asyncio as aioredis

from config.settings import load_settings

PASSWORD = "a long enough password"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def untrusted_address() -> str:
    """A loopback address of its own, never the trusted 127.0.0.1."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def caller(gateway, address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=gateway.url, transport=transport, timeout=30)


async def test_a_forged_x_forwarded_for_from_an_untrusted_caller_changes_nothing(gateway, client):
    email = f"edge-{secrets.token_hex(4)}@example.com"
    assert (await client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD})).status_code == 201
    address = untrusted_address()
    marker = f"198.18.{random.randint(0, 255)}"  # benchmarking range: no other test uses it
    forged = [f"{marker}.{i}" for i in range(22)] + ["not an ip {}[]", "x" * 7000, f"{marker}.250, 127.0.0.1"]
    async with caller(gateway, address) as http:
        statuses = []
        for value in forged:
            response = await http.post("/v1/auth/login", json={"email": email, "password": "wrong password!"},
                                       headers={"X-Forwarded-For": value})
            statuses.append(response.status_code)
        # One address, whatever each attempt claimed: the limit (20) holds.
        assert statuses[:20] == [401] * 20, statuses
        assert set(statuses[20:]) == {429}, statuses
        assert int(response.headers["retry-after"]) >= 1
        right = await http.post("/v1/auth/login", json={"email": email, "password": PASSWORD},
                                headers={"X-Forwarded-For": f"{marker}.251"})
        assert right.status_code == 429
    redis = aioredis.Redis.from_url(gateway.redis.url, decode_responses=True)
    try:
        keys = [key async for key in redis.scan_iter("neuroapi:auth-failures:*")]
    finally:
        await redis.aclose()
    assert any(key.endswith(f":{address}") for key in keys)
    assert not [key for key in keys if marker in key or "not an ip" in key or "xxxx" in key]
    # The trusted hop is still believed: it vouches for the blocked address, or for a fresh one.
    vouched = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD},
                                headers={"X-Forwarded-For": address})
    assert vouched.status_code == 429
    fresh = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD},
                              headers={"X-Forwarded-For": str(ipaddress.ip_address(f"2001:db8::{secrets.token_hex(2)}"))})
    assert fresh.status_code == 200, fresh.text


def half_sent(addresses: list[str], port: int) -> list[socket.socket]:
    """Connections that send a request line and one header, then nothing: those the gateway keeps."""
    opened = []
    for address in addresses:
        try:
            connection = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0))
            connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
            opened.append(connection)
        except OSError:  # refused at once
            pass
    time.sleep(1)  # a refusal (a reset) has arrived by now
    held = []
    for connection in opened:
        connection.setblocking(False)
        try:
            closed = connection.recv(1) == b""
        except BlockingIOError:
            closed = False
        except OSError:
            closed = True
        if closed:
            connection.close()
        else:
            held.append(connection)
    return held


async def test_half_sent_requests_from_one_source_cannot_take_the_gateway(gateway, api_key):
    settings = load_settings(gateway.config_path)
    limit, port = settings.max_connections_per_source, int(gateway.environ["NEUROAPI_PORT"])
    attacker = untrusted_address()
    held = half_sent([attacker] * (limit + 10), port)
    try:
        assert len(held) == limit, f"{len(held)} of {limit + 10} held"
        # Everyone else is still served: another address without a key, a key holder via the trusted hop.
        async with caller(gateway, untrusted_address()) as other:
            assert (await other.get("/healthz")).status_code == 200
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            chat = await http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {api_key}"})
            assert chat.status_code == 200, chat.text
        # The gateway closes a half-sent request once client_request_timeout_s passes (bounded wait).
        deadline = time.monotonic() + settings.client_request_timeout_s + 30
        for connection in held:
            connection.setblocking(True)
            connection.settimeout(max(0.1, deadline - time.monotonic()))
            received = b""
            try:
                while chunk := connection.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass
            assert received == b"" or received.startswith(b"HTTP/1.1 408"), received[:200]
        # Its connections gone, the same source may connect again.
        async with caller(gateway, attacker) as again:
            assert (await again.get("/healthz")).status_code == 200
    finally:
        for connection in held:
            connection.close()


def listening_addresses(port: int) -> set[str]:
    """The local addresses TCP sockets listen on at ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                host, hex_port = local.split(":")
                if state != "0A" or int(hex_port, 16) != port:
                    continue
                raw = bytes.fromhex(host)
                # The kernel prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
                found.add(str(ipaddress.ip_address(raw)))
    return found


def test_haproxy_listens_only_where_it_was_told_and_its_admin_socket_is_private(gateway):
    public = int(gateway.environ["NEUROAPI_PORT"])
    stats, metrics = int(os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]), int(os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"])
    for port in (public, stats, metrics):
        assert listening_addresses(port) == {"127.0.0.1"}, port
    with urllib.request.urlopen(f"http://127.0.0.1:{stats}/stats", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as response:
        assert response.status == 200
    private = os.path.dirname(os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"])
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    sockets = glob.glob(os.path.join(private, "*", "admin.sock"))
    assert sockets
    for path in sockets:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
