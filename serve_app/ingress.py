"""The ingress deployment: the HTTP face of NeuroAPI (FastAPI inside Ray Serve).

Per request it authenticates from its key cache (a hop to the verifier pool only on a miss),
routes from the routing table it holds, and makes exactly one hop: to the provider proxy that
serves the chosen candidate. Responses carry X-Request-Id (set by Serve, random) and a
Server-Timing header splitting gateway time from upstream time."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
import logging
import random
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.api_keys import parse_key
from actors.errors import GatewayError, invalid_api_key
from actors.invalidation import InvalidationListener
from actors.key_store import KEYS_TOPIC, VerifiedKey
from actors.providers.base import Completion, UpstreamCall, UpstreamFailure
from actors.routing import RoutingTable, attempt_order
from config import logs
from serve_app.chat import Outcome, StreamItem, complete_chat, open_chat_stream
from serve_app.key_cache import VerifiedKeyCache, fingerprint
from serve_app.schemas import parse_chat_request

logger = logging.getLogger("neuroapi.ingress")
api = FastAPI(title="NeuroAPI", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(GatewayError)
async def _gateway_error(request: Request, error: GatewayError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {error.detail}"
    return JSONResponse(GatewayError(error.status_code, message, code=code).body(),
                        status_code=error.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(GatewayError(400, "The request is malformed.", code="invalid_request").body(),
                        status_code=400)


@api.exception_handler(Exception)
async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    # The type only: an exception's text is not ours to vet for secrets or prompt text.
    logger.error("request %s failed: %s", request.headers.get("x-request-id"), type(error).__name__)
    return JSONResponse(GatewayError(500, "The gateway failed on this request; quote its X-Request-Id to support.",
                                     "server_error", "internal_error").body(), status_code=500)


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


async def read_body(request: Request, limit: int) -> bytes:
    too_large = GatewayError(413, f"The request body is larger than the limit of {limit} bytes.",
                             code="request_too_large")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large
    return bytes(body)


# Buckets for the gateway's own time per request, in ms: fine where it should be (a few ms).
GATEWAY_MS_BOUNDARIES = [0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 100, 250, 500, 1000]


def gateway_ms(started: float, upstream_ms: float) -> float:
    """Time spent in the gateway, not waiting for the upstream, up to the response's start."""
    return max((time.perf_counter() - started) * 1000 - upstream_ms, 0.0)


def server_timing(own_ms: float, upstream_ms: float) -> str:
    return f"gateway;dur={own_ms:.2f}, upstream;dur={upstream_ms:.2f}"


class RayBackends:
    """``serve_app.chat.Backends`` over the provider proxies' deployment handles."""

    def __init__(self, proxies: dict[str, DeploymentHandle]):
        self._complete = {name: h.complete for name, h in proxies.items()}
        self._stream = {name: h.options(stream=True).stream for name, h in proxies.items()}

    async def complete(self, provider: str, call: UpstreamCall) -> Completion | UpstreamFailure:
        return await self._complete[provider].remote(call)

    async def stream(self, provider: str, call: UpstreamCall) -> AsyncIterator[StreamItem]:
        response = self._stream[provider].remote(call)
        try:
            async for item in response:
                yield item
        finally:
            # The caller left or the stream ended: cancelling closes the upstream request.
            response.cancel()


@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    async def __init__(
        self,
        redis_url: str,
        max_body_bytes: int,
        verifier: DeploymentHandle,
        router: DeploymentHandle,
        proxies: dict[str, DeploymentHandle],
    ):
        logs.install(in_replica=True)
        self._max_body_bytes = max_body_bytes
        self._verifier = verifier
        self._backends = RayBackends(proxies)
        self._table: RoutingTable = await router.table.remote()
        self._keys = VerifiedKeyCache()
        self._listener = InvalidationListener(redis_url, self._invalidate, self._keys.clear)
        self._listener.start()
        self._rng = random.Random()
        self._gateway_ms = Histogram(
            "neuroapi_gateway_added_ms", "Time NeuroAPI added to a chat completion before its response started, ms",
            boundaries=GATEWAY_MS_BOUNDARIES, tag_keys=("stream",))

    def _timing_header(self, started: float, outcome: Outcome, stream: bool) -> str:
        own_ms = gateway_ms(started, outcome.upstream_ms)
        self._gateway_ms.observe(own_ms, tags={"stream": "true" if stream else "false"})
        return server_timing(own_ms, outcome.upstream_ms)

    def _invalidate(self, topic: str, subject: str) -> None:
        if topic == KEYS_TOPIC:
            self._keys.invalidate(subject)

    async def _authenticate(self, request: Request) -> VerifiedKey:
        presented = presented_key(request)
        parsed = parse_key(presented) if presented else None
        if parsed is None:
            raise invalid_api_key()
        key_fingerprint = fingerprint(presented)
        use_cache = self._listener.healthy
        if use_cache:
            cached = self._keys.get(parsed.prefix, key_fingerprint)
            if cached is not None:
                return cached
        generation = self._keys.generation
        verified = await self._verifier.verify.remote(presented)
        if verified is None:
            raise invalid_api_key()
        if use_cache and self._listener.healthy:
            self._keys.put(key_fingerprint, verified, generation)
        return verified

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        await self._authenticate(request)
        chat = parse_chat_request(await read_body(request, self._max_body_bytes))
        route = self._table.resolve(chat.model, chat.mode)
        body = chat.upstream_body()
        order = attempt_order(route, body, self._rng)
        call = UpstreamCall(request.headers.get("x-request-id", ""), "", body,
                            chat.wants_usage_in_stream)
        outcome = Outcome()
        if not chat.stream:
            completion = await complete_chat(self._backends, order, call, outcome)
            return Response(completion.body, media_type="application/json",
                            headers={"Server-Timing": self._timing_header(started, outcome, stream=False)})
        events = await open_chat_stream(self._backends, order, call, outcome)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={
                "Server-Timing": self._timing_header(started, outcome, stream=True),
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        await self._authenticate(request)
        owners = {m: b.provider for m, b in self._table.models.items()}
        return JSONResponse({
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0,
                 "owned_by": owners.get(name, "neuroapi")}
                for name in self._table.listing()
            ],
        })

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def __del__(self) -> None:
        await self._listener.stop()
