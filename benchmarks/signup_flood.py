"""A sign-up flood without a key against the real ``neuroapi serve`` (default settings: bcrypt
cost 12, no trusted proxies), and what it does to a legitimate caller:

    flock /tmp/neuroapi-ray.lock .venv/bin/python -m benchmarks.signup_flood [--duration 30] [--workers 50]

Starts a fast fake upstream and the gateway (benchmarks.systems), then measures a log-in's
latency and a chat call's p50 from their own loopback addresses, first alone, then while
``workers`` flooders sign up as fast as they are answered, each attempt from a fresh loopback
source (127.x.y.z: the gateway sees each as another address, so the per-source limit does not
stop them and only the bcrypt budget bounds the work), and finally while one source floods on
its own (the per-source limit). The flooders run in a process of their own (one shared TLS
context, so a fresh connection costs them little CPU); on a small machine they still share its
cores with the gateway. Prints a table."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import ssl
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import httpx

from benchmarks.report import percentile
from benchmarks.systems import NeuroAPI, Upstream

PASSWORD = "a long enough password"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def sources():
    """Distinct loopback addresses for the flooders (127.0.0.x is left to the measured callers)."""
    for b, c, d in itertools.product(range(1, 255), range(0, 256), range(1, 255)):
        yield f"127.{b}.{c}.{d}"


_TLS = ssl.create_default_context()  # plain HTTP here, but httpx builds one per transport unless given one


def client(base: str, address: str, **kwargs) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address, verify=_TLS)
    return httpx.AsyncClient(base_url=base, timeout=120, transport=transport, **kwargs)


class Caller:
    """The legitimate side: an account that logs in, and a key that chats."""

    def __init__(self, base: str, chat_headers: dict[str, str]):
        self.login_http = client(base, "127.0.0.2")
        self.chat_http = client(base, "127.0.0.3", headers=chat_headers)
        self.credentials = {"email": "legit@example.com", "password": PASSWORD}

    async def setup(self) -> None:
        (await self.login_http.post("/v1/auth/signup", json=self.credentials)).raise_for_status()

    async def measure(self, seconds: float) -> dict:
        """Log-ins one after another, and chat calls one after another, for ``seconds``."""
        deadline = time.monotonic() + seconds
        logins: list[float] = []
        chats: list[float] = []
        statuses: Counter = Counter()

        async def log_ins() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await self.login_http.post("/v1/auth/login", json=self.credentials)
                logins.append(time.perf_counter() - started)
                statuses[f"login {response.status_code}"] += 1

        async def chat_calls() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await self.chat_http.post("/v1/chat/completions", json=CHAT)
                chats.append(time.perf_counter() - started)
                statuses[f"chat {response.status_code}"] += 1

        await asyncio.gather(log_ins(), chat_calls())
        return {"login_p50_s": statistics.median(logins), "login_max_s": max(logins), "logins": len(logins),
                "chat_p50_ms": statistics.median(chats) * 1000, "chat_p99_ms": percentile(chats, 99) * 1000,
                "chats": len(chats), "statuses": dict(statuses)}

    async def aclose(self) -> None:
        await self.login_http.aclose()
        await self.chat_http.aclose()


def flood_process(base: str, workers: int, seconds: float, one_source: bool) -> Counter:
    addresses = itertools.repeat("127.0.0.9") if one_source else sources()
    return asyncio.run(flood(base, workers, seconds, addresses))


async def flood(base: str, workers: int, seconds: float, addresses) -> Counter:
    """``workers`` loops signing up until ``seconds`` pass, each attempt from ``next(addresses)``."""
    deadline = time.monotonic() + seconds
    answers: Counter = Counter()
    counter = itertools.count()

    async def worker() -> None:
        while time.monotonic() < deadline:
            n = next(counter)
            async with client(base, next(addresses)) as http:
                try:
                    response = await http.post("/v1/auth/signup",
                                               json={"email": f"flood{n}@example.com", "password": PASSWORD})
                    answers[f"{response.status_code} {response.json().get('error', {}).get('code', '')}".strip()] += 1
                except httpx.HTTPError as error:
                    answers[type(error).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return answers


async def run(base: str, chat_headers: dict[str, str], seconds: float, workers: int) -> list[tuple[str, dict, Counter]]:
    caller = Caller(base, chat_headers)
    await caller.setup()
    await caller.measure(3)  # warm up connections and the key cache
    rows = [("alone", await caller.measure(seconds), Counter())]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as flooders:
        for one_source, phase in ((False, "a new source each sign-up"), (True, "one source")):
            measured, answers = await asyncio.gather(
                caller.measure(seconds),
                loop.run_in_executor(flooders, flood_process, base, workers, seconds, one_source))
            rows.append((f"{workers} flooders, {phase}", measured, answers))
    await caller.aclose()
    return rows


def table(rows: list[tuple[str, dict, Counter]]) -> str:
    lines = ["| phase | log-in p50 s | log-in max s | log-ins | chat p50 ms | chat p99 ms | chats | caller answers "
             "| sign-up answers |", "|---|---|---|---|---|---|---|---|---|"]
    for phase, m, answers in rows:
        flood_text = ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())) or "-"
        caller_text = ", ".join(f"{k}: {v}" for k, v in sorted(m["statuses"].items()))
        lines.append(f"| {phase} | {m['login_p50_s']:.3f} | {m['login_max_s']:.3f} | {m['logins']} "
                     f"| {m['chat_p50_ms']:.1f} | {m['chat_p99_ms']:.1f} | {m['chats']} | {caller_text} | {flood_text} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--workers", type=int, default=50, help="concurrent flooders")
    args = parser.parse_args()
    upstream = Upstream(None, 0, 0)
    gateway = None
    try:
        gateway = NeuroAPI(upstream, None)
        base = gateway.url.removesuffix("/v1/chat/completions")
        print(table(asyncio.run(run(base, gateway.headers, args.duration, args.workers))))
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
