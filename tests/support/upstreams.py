"""Fake OpenAI, DeepSeek and Anthropic APIs on loopback, speaking their real wire formats.

One server answers all three under path prefixes (``/openai/v1``, ``/deepseek``,
``/anthropic``), plus, for tests that invent providers (third-party or OpenAI-compatible
in-house servers), ``/any/<name>/v1`` (credential ``sk-test-any``). It records every request it receives, checks credentials the way each
provider does, and can be scripted per model to fail in the ways real upstreams fail. The
official SDKs are pointed at it in ``tests/unit/test_fake_upstreams.py`` to keep it honest."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ANTHROPIC_VERSIONS = {"2023-06-01", "2026-10-21"}
CREDENTIALS = {"openai": "sk-test-openai", "deepseek": "sk-test-deepseek", "anthropic": "sk-ant-test"}
ANY_CREDENTIAL = "sk-test-any"


@dataclass
class Recorded:
    provider: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    closed_at: float | None = None
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class Behaviour:
    """What the fake does for one request. Defaults: a normal answer."""

    status: int = 200
    mid_stream_error: bool = False  # stream a few tokens, then the provider's error event
    truncate: bool = False  # stream a few tokens, then close without finishing
    delay_s: float = 0.0  # wait before the response headers
    gap_s: float = 0.0  # between streamed tokens
    tokens: int | None = None  # answer length in tokens (default: echo the prompt)
    unparseable: bool = False  # a 200 whose JSON is an array (echoing the prompt), not the provider's shape
    # Hostile or broken upstreams (each after the credential check, with a 200):
    # Exactly this body (JSON for a plain call, SSE for a stream); a list is sent piece by
    # piece, gap_s apart (so the gateway reads them separately).
    raw: bytes | list[bytes] | None = None
    comments_only: bool = False  # a stream of `: ping` comments and nothing else, for up to 60 s
    stall_after: int | None = None  # stream this many tokens, then only comments, for up to 60 s
    body_bytes: int = 0  # a body this large, sent in 64 KiB pieces (a stream: one SSE line)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _answer_words(body: dict[str, Any], behaviour: Behaviour) -> list[str]:
    if behaviour.tokens is not None:
        return [f"tok{i} " for i in range(behaviour.tokens)]
    last_user = next((m for m in reversed(body.get("messages", [])) if m.get("role") == "user"), {})
    return [w + " " for w in f"Echo: {_text_of(last_user.get('content'))}".split()]


def _prompt_tokens(body: dict[str, Any]) -> int:
    words = sum(len(_text_of(m.get("content")).split()) for m in body.get("messages", []))
    return words + len(str(body.get("system", "")).split())


@dataclass
class FakeUpstreams:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    _scripts: dict[str, deque[Behaviour]] = field(default_factory=lambda: defaultdict(deque))

    # -- control ---------------------------------------------------------------------------
    def script(self, model: str, *behaviours: Behaviour) -> None:
        """The next requests for ``model`` get these behaviours, in order, then normal ones."""
        self._scripts[model].extend(behaviours)

    def reset(self) -> None:
        self.requests.clear()
        self._scripts.clear()

    def for_model(self, model: str) -> list[Recorded]:
        return [r for r in self.requests if r.body.get("model") == model]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def base_urls(self) -> dict[str, str]:
        return {
            "openai": f"{self.url}/openai/v1",
            "deepseek": f"{self.url}/deepseek",
            "anthropic": f"{self.url}/anthropic",
        }

    # -- server ----------------------------------------------------------------------------
    def start(self) -> FakeUpstreams:
        sock = socket.socket()
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[
            Route("/openai/v1/chat/completions", self._openai, methods=["POST"]),
            Route("/deepseek/chat/completions", self._deepseek, methods=["POST"]),
            Route("/any/{name}/v1/chat/completions", self._any, methods=["POST"]),
            Route("/anthropic/v1/messages", self._anthropic, methods=["POST"]),
        ])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    async def _record(self, provider: str, request: Request) -> tuple[Recorded, Behaviour]:
        body = json.loads(await request.body())
        recorded = Recorded(provider, request.url.path, dict(request.headers), body)
        self.requests.append(recorded)
        queue = self._scripts.get(body.get("model", ""))
        behaviour = queue.popleft() if queue else Behaviour()
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        return recorded, behaviour

    # -- OpenAI and DeepSeek ---------------------------------------------------------------
    async def _deepseek(self, request: Request) -> Response:
        return await self._openai(request, provider="deepseek")

    async def _any(self, request: Request) -> Response:
        return await self._openai(request, provider=request.path_params["name"], credential=ANY_CREDENTIAL)

    async def _openai(self, request: Request, provider: str = "openai", credential: str | None = None) -> Response:
        recorded, behaviour = await self._record(provider, request)
        if request.headers.get("authorization") != f"Bearer {credential or CREDENTIALS[provider]}":
            return _openai_error(401, "Incorrect API key provided: sk-te***. ", "invalid_api_key")
        if behaviour.status != 200:
            return _openai_error(behaviour.status, f"fake failure {behaviour.status}", "fake_error")
        body = recorded.body
        if behaviour.unparseable:
            return _unparseable(body, behaviour)
        if _hostile(behaviour):
            return _hostile_answer(body, behaviour)
        words = _answer_words(body, behaviour)
        usage = {"prompt_tokens": _prompt_tokens(body), "completion_tokens": len(words),
                 "total_tokens": _prompt_tokens(body) + len(words)}
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words),
                                                     "refusal": None, "annotations": []},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake",
            })
        include_usage = (body.get("stream_options") or {}).get("include_usage", False)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": body["model"], "service_tier": "default", "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                payload["usage"] = None
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        async def events():
            try:
                yield chunk({"role": "assistant", "content": "", "refusal": None})
                for index, word in enumerate(words):
                    if index == behaviour.stall_after:
                        async for comment in _comments():
                            yield comment
                    if (behaviour.mid_stream_error or behaviour.truncate) and index == 2:
                        if behaviour.mid_stream_error:
                            yield b'data: {"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}\n\n'
                        return
                    if behaviour.gap_s:
                        await asyncio.sleep(behaviour.gap_s)
                    yield chunk({"content": word})
                yield chunk({}, "stop")
                if include_usage:
                    yield b"data: " + json.dumps({
                        "id": completion_id, "object": "chat.completion.chunk", "created": created,
                        "model": body["model"], "choices": [], "usage": usage,
                    }).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
            finally:
                recorded.closed_at = time.monotonic()

        return StreamingResponse(events(), media_type="text/event-stream")

    # -- Anthropic -------------------------------------------------------------------------
    async def _anthropic(self, request: Request) -> Response:
        recorded, behaviour = await self._record("anthropic", request)
        # The API takes the key as x-api-key (what NeuroAPI sends) or as a Bearer token
        # (what the current official SDK sends), and any published version date.
        presented = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if presented != CREDENTIALS["anthropic"]:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") not in ANTHROPIC_VERSIONS:
            return _anthropic_error(400, "invalid_request_error", "anthropic-version header is required")
        body = recorded.body
        if "max_tokens" not in body:
            return _anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
        if any(m.get("role") not in ("user", "assistant") for m in body.get("messages", [])):
            return _anthropic_error(400, "invalid_request_error", "messages: Unexpected role")
        if behaviour.status != 200:
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(behaviour.status, "api_error")
            return _anthropic_error(behaviour.status, kind, f"fake failure {behaviour.status}")
        if behaviour.unparseable:
            return _unparseable(body, behaviour)
        if _hostile(behaviour):
            return _hostile_answer(body, behaviour, anthropic=True)
        words = _answer_words(body, behaviour)
        message_id = "msg_" + uuid.uuid4().hex[:24]
        input_tokens = _prompt_tokens(body)
        if not body.get("stream"):
            return JSONResponse({
                "id": message_id, "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "".join(words)}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": len(words)},
            })

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        async def events():
            try:
                yield event("message_start", {"type": "message_start", "message": {
                    "id": message_id, "type": "message", "role": "assistant", "model": body["model"],
                    "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 1}}})
                yield event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}})
                yield event("ping", {"type": "ping"})
                for index, word in enumerate(words):
                    if index == behaviour.stall_after:
                        async for ping in _comments(anthropic=True):
                            yield ping
                    if (behaviour.mid_stream_error or behaviour.truncate) and index == 2:
                        if behaviour.mid_stream_error:
                            yield event("error", {"type": "error", "error": {
                                "type": "overloaded_error", "message": "Overloaded"}})
                        return
                    if behaviour.gap_s:
                        await asyncio.sleep(behaviour.gap_s)
                    yield event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": word}})
                yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
                yield event("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                              "usage": {"output_tokens": len(words)}})
                yield event("message_stop", {"type": "message_stop"})
            finally:
                recorded.closed_at = time.monotonic()

        return StreamingResponse(events(), media_type="text/event-stream")


def _hostile(behaviour: Behaviour) -> bool:
    return behaviour.raw is not None or behaviour.comments_only or behaviour.body_bytes > 0


async def _comments(anthropic: bool = False):
    """Keep-alives and nothing else, until the client leaves (or 60 s): SSE comments, or the
    ``ping`` events Anthropic sends."""
    for _ in range(1200):
        yield b'event: ping\ndata: {"type": "ping"}\n\n' if anthropic else b": ping\n\n"
        await asyncio.sleep(0.05)


def _hostile_answer(body: dict[str, Any], behaviour: Behaviour, anthropic: bool = False) -> Response:
    media_type = "text/event-stream" if body.get("stream") else "application/json"
    if isinstance(behaviour.raw, bytes):
        return Response(behaviour.raw, media_type=media_type)
    if behaviour.raw is not None:
        async def pieces():
            for index, piece in enumerate(behaviour.raw):
                if index:
                    await asyncio.sleep(behaviour.gap_s or 0.05)
                yield piece

        return StreamingResponse(pieces(), media_type=media_type)
    if behaviour.comments_only:
        return StreamingResponse(_comments(anthropic), media_type=media_type)

    async def padding():  # never the whole body in memory at once
        head = b"data: " if body.get("stream") else b'{"pad": "'
        yield head
        left = behaviour.body_bytes - len(head)
        while left > 0:
            yield b"x" * min(left, 64 * 1024)
            left -= 64 * 1024
        yield b"\n\n" if body.get("stream") else b'"}'

    return StreamingResponse(padding(), media_type=media_type)


def _unparseable(body: dict[str, Any], behaviour: Behaviour) -> Response:
    answer = json.dumps(["".join(_answer_words(body, behaviour))])
    if body.get("stream"):
        return Response(f"data: {answer}\n\n", media_type="text/event-stream")
    return Response(answer, media_type="application/json")


def _openai_error(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


def _anthropic_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}},
                        status_code=status, headers={"request-id": "req_fake"})
