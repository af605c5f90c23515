"""Fake OpenAI, DeepSeek and Anthropic APIs on loopback, speaking their real wire formats
(what they refuse as the real APIs do: ``tests.support.upstream_checks``).

One server answers all three under path prefixes (``/openai/v1``, ``/deepseek``,
``/anthropic``), plus, for tests that invent providers (third-party or OpenAI-compatible
in-house servers), ``/any/<name>/v1`` (credential ``sk-test-any``). It records every request it
receives, checks credentials the way each provider does, validates what the real APIs validate
where that is cheap, and can be scripted per model to fail in the ways real upstreams fail.
The official SDKs are pointed at it in ``tests/unit/test_fake_upstreams.py`` to keep it honest.

What it answers, unscripted (deterministic, so a real client's tool loop works as is):

1. The request has tools, its last message is not a tool result, and tool_choice is not
   "none": it calls the forced tool (a named one; "required"/"any": the first) or, for auto,
   the first tool, with arguments generated from the tool's JSON schema (``instance_of``);
   finish_reason ``tool_calls`` / stop_reason ``tool_use``.
2. Structured output asked for (OpenAI ``response_format`` json_schema, Anthropic
   ``output_config.format``): the content is an instance of the schema, as JSON text;
   json_object: ``{"echo": "<last user text>"}``.
3. The last message is a tool result: "Echo: <the tool result text>".
4. Otherwise: "Echo: <last user text>" (or ``Behaviour.tokens`` tokens).

Token counts: one token per prompt word (the uncached part), 85 per image; the cached and
cache-written tokens a behaviour reports come on top (OpenAI and DeepSeek count them inside
``prompt_tokens``, Anthropic beside ``input_tokens``). One completion token per answer word or
JSON piece, one per 4 characters of tool arguments, plus the reasoning tokens (one per reasoning
word unless ``Behaviour.reasoning_tokens`` says; reported as OpenAI's and DeepSeek's
``completion_tokens_details.reasoning_tokens`` and Anthropic's ``output_tokens_details.thinking_tokens``).

Reasoning: DeepSeek answers ``reasoning_content`` in thinking mode (``deepseek-reasoner``, or
``thinking: enabled``) and, like the real API, then requires it back on assistant turns that
called tools; Anthropic answers a thinking block when thinking is on, signed "sig-<hash>",
and accepts a thinking block back only with a signature it issued (``issued_signatures``).
OpenAI keeps its reasoning hidden and only counts it.

Embeddings (OpenAI's ``/openai/v1/embeddings``): ``fake_embedding``'s deterministic unit vectors,
one token per input word (or per token id), refusing what the real API refuses
(``upstream_checks.check_openai_embeddings``)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.upstream_checks import (
    EMBEDDING_DIMENSIONS,
    Rejected,
    check_anthropic,
    check_deepseek,
    check_openai_chat_model,
    check_openai_embeddings,
    check_openai_fields,
    check_openai_tool_turns,
    deepseek_thinking,
    embedding_tokens,
    signature_for,
    thinking_on,
)

ANTHROPIC_VERSIONS = {"2023-06-01", "2026-10-21"}
CREDENTIALS = {"openai": "sk-test-openai", "deepseek": "sk-test-deepseek", "anthropic": "sk-ant-test"}
ANY_CREDENTIAL = "sk-test-any"
IMAGE_TOKENS = 85  # what one image part counts, whatever its size
DEFAULT_REASONING = "Let me think about this step by step."
JSON_PIECE = 8  # structured-output content streams in pieces of this many characters


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
    """What the fake does for one request. Defaults: a normal answer (see the module doc)."""

    status: int = 200
    mid_stream_error: bool = False  # stream a few deltas, then the provider's error event
    truncate: bool = False  # stream a few deltas, then close without finishing
    delay_s: float = 0.0  # wait before the response headers
    gap_s: float = 0.0  # between streamed deltas
    tokens: int | None = None  # answer length in tokens (default: echo the prompt)
    unparseable: bool = False  # a 200 whose JSON is an array (echoing the prompt), not the provider's shape
    # Hostile or broken upstreams (each after the credential check, with a 200):
    # Exactly this body (JSON for a plain call, SSE for a stream); a list is sent piece by
    # piece, gap_s apart (so the gateway reads them separately).
    raw: bytes | list[bytes] | None = None
    comments_only: bool = False  # a stream of `: ping` comments and nothing else, for up to 60 s
    stall_after: int | None = None  # stream this many deltas, then only comments, for up to 60 s
    body_bytes: int = 0  # a body this large, sent in 64 KiB pieces (a stream: one SSE line)
    # The whole API:
    # (name, exact arguments JSON text) to call instead of the generated call; several = parallel.
    tool_calls: list[tuple[str, str]] | None = None
    fragment: int | None = None  # stream tool arguments in pieces of this many characters (None: whole)
    reasoning: str | None = None  # DeepSeek reasoning_content / Anthropic thinking text (OpenAI: counted)
    cached_tokens: int = 0  # prompt tokens read from the provider's cache
    cache_write_tokens: int = 0  # prompt tokens written to it (Anthropic reports these)
    reasoning_tokens: int | None = None  # default: one per reasoning word


# -- JSON schema instances -----------------------------------------------------------------
_STRING_FORMATS = {"date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00Z",
                   "uri": "https://example.com", "email": "x@example.com",
                   "uuid": "00000000-0000-4000-8000-000000000000"}


def instance_of(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value valid for ``schema``, as pydantic and tool definitions write them: an object gets
    every property, a string "x" (or an enum's first value), integer 1, number 1.5, boolean
    true, an array one item; ``$ref`` into ``$defs`` is followed, anyOf/oneOf take the first."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 32:
        return "x"
    if "$ref" in schema:
        target: Any = root
        for key in schema["$ref"].removeprefix("#/").split("/"):
            target = target.get(key, {}) if key else target
        return instance_of(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combined in ("anyOf", "oneOf", "allOf"):
        if schema.get(combined):
            return instance_of(schema[combined][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        return {name: instance_of(sub, root, depth + 1) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        if schema.get("prefixItems"):
            return [instance_of(item, root, depth + 1) for item in schema["prefixItems"]]
        return [instance_of(schema.get("items", {}), root, depth + 1)] * max(1, schema.get("minItems", 1))
    if kind == "string":
        return _STRING_FORMATS.get(schema.get("format"), "x" * max(1, schema.get("minLength", 1)))
    if kind == "integer":
        return max(1, math.ceil(schema.get("minimum", 1)))
    if kind == "number":
        return max(1.5, schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    return None


# -- reading requests ----------------------------------------------------------------------
def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(part.get("content")) if part.get("type") == "tool_result"
                        else part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _images_in(content: Any) -> int:
    if not isinstance(content, list):
        return 0
    return sum(1 if part.get("type") in ("image_url", "image") else _images_in(part.get("content"))
               for part in content if isinstance(part, dict))


def _prompt_tokens(body: dict[str, Any]) -> int:
    """The uncached prompt: its words, and a fixed count per image."""
    messages = body.get("messages", [])
    words = sum(len(_text_of(m.get("content")).split()) for m in messages)
    images = sum(_images_in(m.get("content")) for m in messages)
    return words + len(_text_of(body.get("system", "")).split()) + IMAGE_TOKENS * images


def _is_tool_result_turn(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return message.get("role") == "tool" or (
        message.get("role") == "user" and isinstance(content, list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content))


@dataclass
class Asked:
    """What a request asks for, whichever provider's dialect it is in."""

    tools: list[tuple[str, Any]]  # (name, JSON schema of the arguments)
    choice: str | None  # None (no tool call), "auto", "required" or the forced tool's name
    parallel: bool
    tool_results: list[str] | None  # the texts, when the last turn is tool results
    output_schema: Any = None
    json_object: bool = False
    last_user_text: str = ""


def _last_user_text(body: dict[str, Any]) -> str:
    last = next((m for m in reversed(body.get("messages", []))
                 if m.get("role") == "user" and not _is_tool_result_turn(m)), {})
    return _text_of(last.get("content"))


def _tool_results(body: dict[str, Any]) -> list[str] | None:
    messages = body.get("messages", [])
    if not messages or not _is_tool_result_turn(messages[-1]):
        return None
    if messages[-1].get("role") == "user":
        return [_text_of(b.get("content")) for b in messages[-1]["content"] if b.get("type") == "tool_result"]
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, _text_of(message.get("content")))
    return results


def _asked_openai(body: dict[str, Any]) -> Asked:
    tools = [(t["function"]["name"], t["function"].get("parameters", {"type": "object", "properties": {}}))
             for t in body.get("tools") or [] if t.get("type") == "function"]
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        choice = choice.get("function", {}).get("name")
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema", {}) \
        if response_format.get("type") == "json_schema" else None
    return Asked(tools, None if choice == "none" else choice, body.get("parallel_tool_calls", True),
                 _tool_results(body), schema, response_format.get("type") == "json_object",
                 _last_user_text(body))


def _asked_anthropic(body: dict[str, Any]) -> Asked:
    tools = [(t["name"], t["input_schema"]) for t in body.get("tools") or [] if "input_schema" in t]
    tool_choice = body.get("tool_choice") or {"type": "auto"}
    choices = {"auto": "auto", "any": "required", "none": None}
    choice = choices.get(tool_choice["type"], tool_choice.get("name"))
    output_format = (body.get("output_config") or {}).get("format") or {}
    return Asked(tools, choice, not tool_choice.get("disable_parallel_tool_use", False),
                 _tool_results(body), output_format.get("schema"), False, _last_user_text(body))


# -- what to answer ------------------------------------------------------------------------
@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text

    def pieces(self, fragment: int | None) -> list[str]:
        size = fragment or max(1, len(self.arguments))
        return [self.arguments[i:i + size] for i in range(0, len(self.arguments), size)] or [""]


@dataclass
class Answer:
    pieces: list[str]  # the content, in streamed pieces ("" joined)
    tool_calls: list[ToolCall]
    reasoning: str | None
    reasoning_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def content_tokens(self) -> int:
        return len(self.pieces) + sum(math.ceil(len(c.arguments) / 4) for c in self.tool_calls)

    @property
    def completion_tokens(self) -> int:
        return self.content_tokens + self.reasoning_tokens


def _spaced_words(text: str) -> list[str]:
    """``text`` in word pieces that join back to exactly ``text``."""
    return re.findall(r"\S+\s*|\s+", text)


def _echo(text: str) -> list[str]:
    return [w + " " for w in f"Echo: {text}".split()]


def _json_pieces(value: Any) -> list[str]:
    text = json.dumps(value)
    return [text[i:i + JSON_PIECE] for i in range(0, len(text), JSON_PIECE)]


def _answer(asked: Asked, behaviour: Behaviour, reasoning: str | None, id_prefix: str) -> Answer:
    reasoning_tokens = behaviour.reasoning_tokens
    if reasoning_tokens is None:
        reasoning_tokens = len(reasoning.split()) if reasoning else 0
    calls: list[tuple[str, str]] = []
    if behaviour.tool_calls:
        calls = list(behaviour.tool_calls)
    elif asked.tools and asked.tool_results is None and asked.choice is not None:
        schemas = dict(asked.tools)
        name = asked.choice if asked.choice in schemas else asked.tools[0][0]
        calls = [(name, json.dumps(instance_of(schemas[name])))]
    if not asked.parallel:
        calls = calls[:1]
    if calls:
        tool_calls = [ToolCall(f"{id_prefix}{uuid.uuid4().hex[:24]}", name, arguments)
                      for name, arguments in calls]
        return Answer([], tool_calls, reasoning, reasoning_tokens)
    if behaviour.tokens is not None:
        pieces = [f"tok{i} " for i in range(behaviour.tokens)]
    elif asked.output_schema is not None:
        pieces = _json_pieces(instance_of(asked.output_schema))
    elif asked.json_object:
        pieces = _json_pieces({"echo": asked.last_user_text})
    elif asked.tool_results is not None:
        pieces = _echo(" ".join(asked.tool_results))
    else:
        pieces = _echo(asked.last_user_text)
    return Answer(pieces, [], reasoning, reasoning_tokens)


Step = tuple[bytes, bool]  # an SSE event, and whether it is a delta (paced, counted)


async def _paced(steps: list[Step], behaviour: Behaviour, error_event: bytes,
                 anthropic: bool) -> AsyncIterator[bytes | None]:
    """The steps as the behaviour paces them; only counted steps (deltas) count for
    ``stall_after`` and the failure after two deltas. Yields None where the stream must end."""
    index = 0
    for payload, counted in steps:
        if counted:
            if index == behaviour.stall_after:
                async for comment in _comments(anthropic):
                    yield comment
            if (behaviour.mid_stream_error or behaviour.truncate) and index == 2:
                if behaviour.mid_stream_error:
                    yield error_event
                yield None
                return
            if behaviour.gap_s:
                await asyncio.sleep(behaviour.gap_s)
            index += 1
        yield payload


# -- the server ----------------------------------------------------------------------------
@dataclass
class FakeUpstreams:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    # Every thinking signature this fake has issued (kept across resets: a caller may send a
    # turn back after a reset); a thinking block is accepted back only with one of these.
    issued_signatures: set[str] = field(default_factory=set)
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
            Route("/openai/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/deepseek/chat/completions", self._deepseek, methods=["POST"]),
            Route("/any/{name}/v1/chat/completions", self._any, methods=["POST"]),
            Route("/anthropic/v1/messages", self._anthropic, methods=["POST"]),
            Route("/anthropic/v1/messages/count_tokens", self._anthropic_count, methods=["POST"]),
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
        body = recorded.body
        try:
            if provider == "openai":
                check_openai_chat_model(body.get("model"))
                check_openai_fields(body)
            if provider == "deepseek":
                check_deepseek(body)
            check_openai_tool_turns(body)
        except Rejected as rejected:
            return _openai_error(rejected.status, rejected.message, "invalid_request_error", rejected.param)
        if behaviour.status != 200:
            return _openai_error(behaviour.status, f"fake failure {behaviour.status}", "fake_error")
        if behaviour.unparseable:
            return _unparseable(body, behaviour)
        if _hostile(behaviour):
            return _hostile_answer(body, behaviour)
        # Reasoning text: DeepSeek's thinking mode and OpenAI-compatible servers show it;
        # OpenAI's reasoning models keep it hidden (only counted).
        reasoning = behaviour.reasoning
        if provider == "deepseek" and reasoning is None and deepseek_thinking(body):
            reasoning = DEFAULT_REASONING
        shown_reasoning = reasoning if provider != "openai" else None
        answer = _answer(_asked_openai(body), behaviour, reasoning, "call_")
        choices = max(1, body.get("n") or 1)
        usage = _openai_usage(provider, _prompt_tokens(body), answer, behaviour, choices)
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        finish = "tool_calls" if answer.tool_calls else "stop"
        logprobs = bool(body.get("logprobs"))
        top = body.get("top_logprobs") or 0
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if answer.tool_calls else answer.text,
                                       "refusal": None, "annotations": []}
            if answer.tool_calls:
                message["tool_calls"] = [{"id": c.id, "type": "function",
                                          "function": {"name": c.name, "arguments": c.arguments}}
                                         for c in answer.tool_calls]
            if shown_reasoning is not None:
                message["reasoning_content"] = shown_reasoning
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created,
                "model": body["model"],
                "choices": [{"index": i, "message": message,
                             "logprobs": _logprobs(answer.pieces, top) if logprobs else None,
                             "finish_reason": finish} for i in range(choices)],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake",
            })
        include_usage = (body.get("stream_options") or {}).get("include_usage", False)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, piece: str | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": body["model"], "service_tier": "default", "system_fingerprint": "fp_fake",
                "choices": [{"index": i, "delta": delta,
                             "logprobs": _logprobs([piece], top) if logprobs and piece is not None else None,
                             "finish_reason": finish_reason} for i in range(choices)],
            }
            if include_usage:
                payload["usage"] = None
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        opening = {"role": "assistant", "content": None if answer.tool_calls else "", "refusal": None}
        steps: list[tuple[bytes, bool]] = [(chunk(opening), False)]
        for word in _spaced_words(shown_reasoning or ""):
            steps.append((chunk({"content": None, "reasoning_content": word}), True))
        for word in answer.pieces:
            delta = {"content": word, "reasoning_content": None} if shown_reasoning else {"content": word}
            steps.append((chunk(delta, piece=word), True))
        for index, call in enumerate(answer.tool_calls):
            steps.append((chunk({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                                 "function": {"name": call.name, "arguments": ""}}]}), True))
            for piece in call.pieces(behaviour.fragment):
                fragment = {"index": index, "function": {"arguments": piece}}
                steps.append((chunk({"tool_calls": [fragment]}), True))
        error_event = (b'data: {"error": {"message": "The server had an error while processing your request.", '
                       b'"type": "server_error", "param": null, "code": null}}\n\n')

        async def events():
            try:
                async for payload in _paced(steps, behaviour, error_event, anthropic=False):
                    if payload is None:
                        return
                    yield payload
                yield chunk({}, finish)
                if include_usage:
                    yield b"data: " + json.dumps({
                        "id": completion_id, "object": "chat.completion.chunk", "created": created,
                        "model": body["model"], "choices": [], "usage": usage,
                    }).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
            finally:
                recorded.closed_at = time.monotonic()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _embeddings(self, request: Request) -> Response:
        """OpenAI's POST /v1/embeddings: a deterministic unit vector per (model, input), shortened and
        renormalised with ``dimensions``; floats (the float32 values) or base64 float32 little-endian."""
        recorded, behaviour = await self._record("openai", request)
        if request.headers.get("authorization") != f"Bearer {CREDENTIALS['openai']}":
            return _openai_error(401, "Incorrect API key provided: sk-te***. ", "invalid_api_key")
        body = recorded.body
        try:
            inputs = check_openai_embeddings(body)
        except Rejected as rejected:
            return _openai_error(rejected.status, rejected.message, None, rejected.param)
        if behaviour.status != 200:
            return _openai_error(behaviour.status, f"fake failure {behaviour.status}", "fake_error")
        if behaviour.unparseable:
            return JSONResponse([fake_embedding(body["model"], item, None).tolist() for item in inputs])
        if _hostile(behaviour):
            return _hostile_answer(body, behaviour)
        base64_wanted = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = fake_embedding(body["model"], item, body.get("dimensions"))
            encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode() if base64_wanted else vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(embedding_tokens(item) for item in inputs)
        return JSONResponse({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # -- Anthropic -------------------------------------------------------------------------
    async def _anthropic_count(self, request: Request) -> Response:
        """Anthropic's token counting: a message request without max_tokens or stream."""
        recorded, _ = await self._record("anthropic", request)
        presented = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if presented != CREDENTIALS["anthropic"]:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        extra = sorted(set(recorded.body) & {"max_tokens", "stream", "temperature", "top_p", "top_k",
                                             "stop_sequences", "metadata"})
        if extra:
            return _anthropic_error(400, "invalid_request_error", f"{extra[0]}: Extra inputs are not permitted")
        try:
            check_anthropic({**recorded.body, "max_tokens": 1 << 30}, self.issued_signatures)
        except Rejected as rejected:
            return _anthropic_error(400, "invalid_request_error", rejected.message)
        tools = sum(len(json.dumps(tool).split()) for tool in recorded.body.get("tools") or ())
        return JSONResponse({"input_tokens": _prompt_tokens(recorded.body) + tools})

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
        try:
            check_anthropic(body, self.issued_signatures)
        except Rejected as rejected:
            return _anthropic_error(400, "invalid_request_error", rejected.message)
        if behaviour.status != 200:
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(behaviour.status, "api_error")
            return _anthropic_error(behaviour.status, kind, f"fake failure {behaviour.status}")
        if behaviour.unparseable:
            return _unparseable(body, behaviour)
        if _hostile(behaviour):
            return _hostile_answer(body, behaviour, anthropic=True)
        reasoning = behaviour.reasoning
        if reasoning is None and thinking_on(body):
            reasoning = DEFAULT_REASONING
        answer = _answer(_asked_anthropic(body), behaviour, reasoning, "toolu_")
        signature = signature_for(reasoning) if reasoning is not None else None
        if signature is not None:
            self.issued_signatures.add(signature)
        message_id = "msg_" + uuid.uuid4().hex[:24]
        usage = {"input_tokens": _prompt_tokens(body),
                 "cache_creation_input_tokens": behaviour.cache_write_tokens,
                 "cache_read_input_tokens": behaviour.cached_tokens,
                 "cache_creation": {"ephemeral_5m_input_tokens": behaviour.cache_write_tokens,
                                    "ephemeral_1h_input_tokens": 0},
                 "output_tokens": answer.completion_tokens, "service_tier": "standard"}
        if reasoning is not None or behaviour.reasoning_tokens is not None:
            # Thinking counts inside output_tokens, and is reported on its own too.
            usage["output_tokens_details"] = {"thinking_tokens": answer.reasoning_tokens}
        stop_reason = "tool_use" if answer.tool_calls else "end_turn"
        if not body.get("stream"):
            content: list[dict[str, Any]] = []
            if reasoning is not None:
                content.append({"type": "thinking", "thinking": reasoning, "signature": signature})
            if answer.pieces or not answer.tool_calls:
                content.append({"type": "text", "text": answer.text})
            content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": json.loads(c.arguments)}
                        for c in answer.tool_calls]
            return JSONResponse({
                "id": message_id, "type": "message", "role": "assistant", "model": body["model"],
                "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage,
            })

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        def delta(index: int, payload: dict[str, Any]) -> Step:
            data = {"type": "content_block_delta", "index": index, "delta": payload}
            return event("content_block_delta", data), True

        def block(index: int, start: dict[str, Any], deltas: list[Step]) -> list[Step]:
            opened = event("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": start})
            closed = event("content_block_stop", {"type": "content_block_stop", "index": index})
            return [(opened, False), *deltas, (closed, False)]

        steps: list[Step] = []
        index = 0
        if reasoning is not None:
            steps += block(index, {"type": "thinking", "thinking": "", "signature": ""},
                           [delta(index, {"type": "thinking_delta", "thinking": word})
                            for word in _spaced_words(reasoning)]
                           + [delta(index, {"type": "signature_delta", "signature": signature})])
            index += 1
        if answer.pieces or not answer.tool_calls:
            text = block(index, {"type": "text", "text": ""},
                         [delta(index, {"type": "text_delta", "text": w}) for w in answer.pieces])
            steps += [text[0], (event("ping", {"type": "ping"}), False), *text[1:]]
            index += 1
        for call in answer.tool_calls:
            steps += block(index, {"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
                           [delta(index, {"type": "input_json_delta", "partial_json": piece})
                            for piece in call.pieces(behaviour.fragment)])
            index += 1
        start_usage = dict(usage, output_tokens=1)
        error_event = event("error", {"type": "error",
                                      "error": {"type": "overloaded_error", "message": "Overloaded"}})

        async def events():
            try:
                yield event("message_start", {"type": "message_start", "message": {
                    "id": message_id, "type": "message", "role": "assistant", "model": body["model"],
                    "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
                async for payload in _paced(steps, behaviour, error_event, anthropic=True):
                    if payload is None:
                        return
                    yield payload
                yield event("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                              "usage": {k: usage[k] for k in (
                                                  "input_tokens", "cache_creation_input_tokens",
                                                  "cache_read_input_tokens", "output_tokens",
                                                  "output_tokens_details") if k in usage}})
                yield event("message_stop", {"type": "message_stop"})
            finally:
                recorded.closed_at = time.monotonic()

        return StreamingResponse(events(), media_type="text/event-stream")


def fake_embedding(model: str, item: str | list[int], dimensions: int | None) -> numpy.ndarray:
    """The fake's vector for one input: float32, unit length, the same every time (and the shortened
    one is the full one's head, renormalised, as with OpenAI's text-embedding-3 models)."""
    seed = int.from_bytes(hashlib.sha256(json.dumps([model, item]).encode()).digest()[:8], "little")
    vector = numpy.random.default_rng(seed).standard_normal(EMBEDDING_DIMENSIONS[model]).astype(numpy.float32)
    vector = vector[:dimensions] if dimensions else vector
    return (vector / numpy.linalg.norm(vector)).astype(numpy.float32)


def _openai_usage(provider: str, uncached: int, answer: Answer, behaviour: Behaviour,
                  choices: int) -> dict[str, Any]:
    """OpenAI's usage (cached tokens inside prompt_tokens, reasoning inside completion_tokens);
    DeepSeek adds its prompt_cache_hit/miss counts and reports reasoning only when it reasoned."""
    prompt = uncached + behaviour.cached_tokens
    completion = answer.completion_tokens * choices
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion,
                             "prompt_tokens_details": {"cached_tokens": behaviour.cached_tokens}}
    reasoning = {"reasoning_tokens": answer.reasoning_tokens * choices}
    if provider == "deepseek":
        usage.update(prompt_cache_hit_tokens=behaviour.cached_tokens, prompt_cache_miss_tokens=uncached)
        if answer.reasoning is not None or behaviour.reasoning_tokens is not None:
            usage["completion_tokens_details"] = reasoning
        return usage
    usage["prompt_tokens_details"]["audio_tokens"] = 0
    usage["completion_tokens_details"] = dict(reasoning, audio_tokens=0, accepted_prediction_tokens=0,
                                              rejected_prediction_tokens=0)
    return usage


def _logprobs(pieces: list[str], top: int) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [dict(entry(p, -0.5), top_logprobs=[entry(p, -0.5 - i) for i in range(top)])
                        for p in pieces], "refusal": None}


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
    answer = json.dumps(["".join(_echo(_last_user_text(body)) if behaviour.tokens is None
                                 else [f"tok{i} " for i in range(behaviour.tokens)])])
    if body.get("stream"):
        return Response(f"data: {answer}\n\n", media_type="text/event-stream")
    return Response(answer, media_type="application/json")


def _openai_error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def _anthropic_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}},
                        status_code=status, headers={"request-id": "req_fake"})
