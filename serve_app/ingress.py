"""The ingress deployment: the HTTP face of NeuroAPI (FastAPI inside Ray Serve).

Per request it authenticates from its key cache (a hop to the verifier pool only on a miss),
routes from the routing table it holds, and makes exactly one hop: to the provider proxy that
serves the chosen candidate. Responses carry X-Request-Id (set by Serve, random) and a
Server-Timing header splitting gateway time from upstream time.

Account endpoints (sign-up, log-in, keys) are thin: the verifier pool does the work. Failed
authentication of any kind counts against the source address (``actors.auth_throttle``)."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
import asyncio
import hmac
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.api_keys import parse_key
from actors.auth_throttle import SignupThrottle
from actors.errors import GatewayError, invalid_api_key, service_unavailable
from actors.invalidation import InvalidationListener
from actors.key_store import KEYS_TOPIC, VerifiedKey
from actors.metering import CallRecord, cost_units_text, current_month
from actors.metering_spill import SpillFiles
from actors.providers.base import Completion, UpstreamCall, UpstreamFailure
from actors.redis_conn import connect, redis_unavailable
from actors.routing import FINETUNE_ADAPTER, Backend, RoutingTable, attempt_order
from actors.scopes import ACCOUNT_TOPIC, Scope
from actors.sessions import TOKEN_TAG as SESSION_TOKEN_TAG
from actors.sessions import Session
from actors.usage_store import UsageStore
from config import logs
from config.settings import Settings
from finetunes.registry import FINETUNES_TOPIC, FineTuneRegistry, RegistryError
from finetunes.service import DeployError, FineTuneService
from models.engine import Adapter
from serve_app.admin_token import read_admin_token
from serve_app.auth_guard import BLOCKS_TOPIC, FailedAuthGuard, too_many_signups
from serve_app.call_meter import CallMeter, completion_text, estimated_usage, prompt_text, streamed_text
from serve_app.chat import Deadline, Outcome, StreamItem, complete_chat, open_chat_stream
from serve_app.client_address import forwarded_for, parse_networks
from serve_app.finetune_resolver import FineTuneResolver
from serve_app.key_cache import VerifiedKeyCache, fingerprint
from serve_app.record_shipper import RecordShipper
from serve_app.schemas import (
    AccountRef,
    AccountScopeChange,
    Credentials,
    FineTuneDeploy,
    NewKey,
    parse_body,
    parse_chat_request,
)
from serve_app.usage_report import previous_month, usage_view
from serve_app.verifier_calls import RaisingHandle

logger = logging.getLogger("neuroapi.ingress")
COST_HEADER = "X-NeuroAPI-Cost-Units"  # a non-streamed answer's price (also usage.cost_units)
KEY_USE_FLUSH_S = 5.0
api = FastAPI(title="NeuroAPI", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(GatewayError)
async def _gateway_error(request: Request, error: GatewayError) -> Response:
    # The same bytes as the call record's response_bytes (``CallMeter.rejected``).
    return Response(error.rendered(), status_code=error.status, headers=error.headers, media_type="application/json")


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {error.detail}"
    return await _gateway_error(request, GatewayError(error.status_code, message, code=code))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> Response:
    return await _gateway_error(request, GatewayError(400, "The request is malformed.", code="invalid_request"))


def internal_error() -> GatewayError:
    return GatewayError(500, "The gateway failed on this request; quote its X-Request-Id to support.",
                        "server_error", "internal_error")


@api.exception_handler(Exception)
async def _unexpected(request: Request, error: Exception) -> Response:
    if redis_unavailable(error):  # Redis out of reach (after retries): a 503 to retry, not a crash
        return await _gateway_error(request, service_unavailable())
    # The type only: an exception's text is not ours to vet for secrets or prompt text.
    logger.error("request %s failed: %s", request.headers.get("x-request-id"), type(error).__name__)
    return await _gateway_error(request, internal_error())


def invalid_session() -> GatewayError:
    return GatewayError(401, "Log in first: send 'Authorization: Bearer <token from POST /v1/auth/login>'.",
                        code="invalid_session")


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, arriving within ``timeout_s``: the edge bounds
    only the request head, so a caller trickling its body would otherwise hold a slot forever."""
    too_large = GatewayError(413, f"The request body is larger than the limit of {limit} bytes.",
                             code="request_too_large")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for piece in request.stream():
                body += piece
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise GatewayError(408, f"The request body did not arrive within {timeout_s:g} s.",
                           code="request_timeout") from None
    return bytes(body)


# Buckets for the gateway's own time per request, in ms: fine where it should be (a few ms).
GATEWAY_MS_BOUNDARIES = [0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 100, 250, 500, 1000]


def gateway_ms(started: float, upstream_ms: float) -> float:
    """Time spent in the gateway, not waiting for the upstream, up to the response's start."""
    return max((time.perf_counter() - started) * 1000 - upstream_ms, 0.0)


def server_timing(own_ms: float, upstream_ms: float) -> str:
    return f"gateway;dur={own_ms:.2f}, upstream;dur={upstream_ms:.2f}"


def raise_if_error(result):
    """Deployments return a GatewayError as a value (it crosses Ray as itself); raise it here."""
    if isinstance(result, GatewayError):
        raise result
    return result


def finetune_fields(finetune) -> dict:
    return {"object": "finetune", "name": finetune.name, "version": finetune.version, "state": finetune.state,
            "base_model": finetune.base_model, "model": f"ft:{finetune.name}", "digest": finetune.digest,
            "rank": finetune.rank, "owner_account": finetune.owner_account, "deployed_by": finetune.deployed_by,
            "deployed_at_ms": finetune.deployed_at_ms}


def key_fields(info) -> dict:
    """A key's public description: never the secret, its hash or its ciphertext."""
    return {"prefix": info.prefix, "name": info.name, "status": info.status,
            "created_at": info.created_at, "last_used_at": info.last_used_at}


def overloaded(error: BackPressureError) -> UpstreamFailure:
    """Every replica busy and the queue full: 503 with Retry-After (another candidate may serve)."""
    retry_after = max(1, round(getattr(error, "retry_after_s", None) or 1))
    return UpstreamFailure(GatewayError(
        503, "The model is at capacity; retry shortly.", "server_error", "model_overloaded",
        headers={"Retry-After": str(retry_after)}), retriable=True, upstream_ms=0.0)


class RayBackends:
    """``serve_app.chat.Backends`` over the deployment handles of the provider proxies and the
    in-house models, by deployment name (``Backend.deployment``)."""

    def __init__(self, deployments: dict[str, DeploymentHandle]):
        self._handles = deployments
        self._complete = {name: h.complete for name, h in deployments.items()}
        self._stream = {name: h.options(stream=True).stream for name, h in deployments.items()}

    def _method(self, backend: Backend, call: UpstreamCall, stream: bool):
        if call.adapter is None:
            return (self._stream if stream else self._complete)[backend.deployment]
        # Serve's multiplexing sends a fine-tune to the replicas that already hold its adapter.
        handle = self._handles[backend.deployment].options(stream=stream, multiplexed_model_id=call.adapter.key)
        return handle.stream if stream else handle.complete

    async def complete(self, backend: Backend, call: UpstreamCall) -> Completion | UpstreamFailure:
        try:
            return await self._method(backend, call, stream=False).remote(call)
        except BackPressureError as error:
            return overloaded(error)

    async def stream(self, backend: Backend, call: UpstreamCall) -> AsyncIterator[StreamItem]:
        response = self._method(backend, call, stream=True).remote(call)
        try:
            try:
                first = await anext(response)
            except BackPressureError as error:
                yield overloaded(error)
                return
            yield first
            async for item in response:
                yield item
        finally:
            # The caller left or the stream ended: cancelling closes the upstream request
            # (or aborts the generation in an in-house engine).
            response.cancel()


@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    async def __init__(
        self,
        settings: Settings,
        redis_url: str,
        verifier: DeploymentHandle,
        router: DeploymentHandle,
        backends: dict[str, DeploymentHandle],
        batcher: DeploymentHandle | None,
    ):
        logs.install(in_replica=True)
        self._body_limits = (settings.max_body_bytes, settings.client_body_timeout_s)
        self._deadline_s = settings.request_deadline_s
        self._redis = connect(redis_url)
        self._guard = FailedAuthGuard(self._redis, parse_networks(settings.trusted_proxies),
                                      settings.failed_auth_limit, settings.failed_auth_window_s)
        self._signups = SignupThrottle(self._redis, settings.signup_limit, settings.signup_window_s)
        self._key_uses: dict[str, int] = {}  # prefix → last use (unix s), flushed in batches
        self._flusher = asyncio.get_running_loop().create_task(self._flush_key_uses_forever())
        self._prices = settings.prices
        # Unshipped records are also on disk, in the batcher's spill folder: a killed replica's are replayed.
        self._records = RecordShipper(batcher, wal=SpillFiles(settings.metering_spill_dir))
        self._records.start()
        # The admin API is on only with a long enough token in this replica's environment (never in config).
        self._admin_token = read_admin_token(os.environ)
        self._router = router
        self._verifier = RaisingHandle(verifier)  # its GatewayError values raised; Redis away = 503
        self._backends = RayBackends(backends)
        self._engines: dict[str, str] = {}  # in-house model → the engine serving it, once known
        self._engine_names = asyncio.get_running_loop().create_task(self._learn_engines(backends))
        self._table: RoutingTable = await router.table.remote()
        self._keys = VerifiedKeyCache()
        self._finetunes = FineTuneResolver(FineTuneRegistry(self._redis))
        self._finetune_service = FineTuneService(settings, self._redis)
        self._listener = InvalidationListener(redis_url, self._invalidate, self._forget_everything,
                                              settings.cache_outage_serve_s)
        self._listener.start()
        self._rng = random.Random()
        self._gateway_ms = Histogram(
            "neuroapi_gateway_added_ms", "Time NeuroAPI added to a chat completion before its response started, ms",
            boundaries=GATEWAY_MS_BOUNDARIES, tag_keys=("stream",))

    def _timing_header(self, started: float, outcome: Outcome, stream: bool) -> str:
        own_ms = gateway_ms(started, outcome.upstream_ms)
        self._gateway_ms.observe(own_ms, tags={"stream": "true" if stream else "false"})
        return server_timing(own_ms, outcome.upstream_ms)

    def _forget_everything(self) -> None:
        self._keys.clear()
        self._finetunes.clear()

    def _invalidate(self, topic: str, subject: str) -> None:
        if topic == FINETUNES_TOPIC:
            self._finetunes.invalidate(subject)
        elif topic == KEYS_TOPIC:
            self._keys.invalidate(subject)
        elif topic == ACCOUNT_TOPIC:
            self._keys.invalidate_account(subject)
        elif topic == BLOCKS_TOPIC:
            self._guard.block(subject)

    # ---- who is calling -------------------------------------------------------------------

    def _address(self, request: Request) -> str:
        """The caller's address (canonical), blocked or not."""
        return self._guard.address(request.client.host if request.client else None,
                                   forwarded_for(request.headers))

    def _source(self, request: Request) -> str:
        """The caller's address, refused at once while it is blocked for failed attempts."""
        return self._guard.source(request.client.host if request.client else None,
                                  forwarded_for(request.headers))

    async def _failed(self, address: str, error: GatewayError) -> GatewayError:
        return await self._guard.failed(address, error)

    async def _authenticate(self, request: Request) -> VerifiedKey:
        # A blocked address is still served a key this replica has verified (a key's secret cannot
        # be guessed, so this gives a guesser nothing, and callers sharing the address keep working);
        # anything else from it is refused here, before any lookup or hop.
        address = self._address(request)
        presented = presented_key(request)
        parsed = parse_key(presented) if presented else None
        if parsed is None:  # no key, or a checksum that does not match: no lookup at all
            self._guard.refuse_if_blocked(address)
            raise await self._failed(address, invalid_api_key())
        key_fingerprint = fingerprint(presented)
        # While Redis is away, keys verified before are served for a bounded time (actors.invalidation).
        use_cache = self._listener.cache_usable
        verified = self._keys.get(parsed.prefix, key_fingerprint) if use_cache else None
        if verified is None:
            self._guard.refuse_if_blocked(address)
            generation = self._keys.generation
            verified = await self._verifier.verify.remote(presented)
            if verified is None:
                logger.info("key %s rejected: unknown, wrong secret, revoked or account disabled", parsed.prefix)
                raise await self._failed(address, invalid_api_key())
            if self._listener.healthy:  # cached only while invalidations are heard
                self._keys.put(key_fingerprint, verified, generation)
        self._key_uses[verified.prefix] = int(time.time())
        return verified

    async def _logged_in(self, request: Request) -> Session:
        """The caller's live session, for account endpoints."""
        address = self._source(request)
        token = presented_key(request) or ""
        session = await self._verifier.session.remote(token) if token else None
        if session is None:
            raise await self._failed(address, invalid_session())
        return session

    async def _admin(self, request: Request) -> str:
        """The audit actor for an admin call with the right token."""
        address = self._source(request)
        if not self._admin_token.on:
            raise GatewayError(403, f"The admin API is off: {self._admin_token.off_because}.",
                               type="permission_error", code="admin_disabled")
        presented = (presented_key(request) or "").encode()
        if not hmac.compare_digest(presented, self._admin_token.value):
            raise await self._failed(address, GatewayError(401, "Invalid admin token.", code="invalid_admin_token"))
        return f"admin-api from {address}"

    async def _learn_engines(self, backends: dict[str, DeploymentHandle]) -> None:
        """For /v1/models; asked in the background so the ingress never waits for a model to load."""
        for name, handle in backends.items():
            if name.startswith("Model-"):
                try:
                    self._engines[name.removeprefix("Model-")] = await handle.engine_name.remote()
                except Exception as error:
                    logger.warning("could not learn the engine of %s: %s", name, type(error).__name__)

    async def _flush_key_uses_forever(self) -> None:
        while True:
            await asyncio.sleep(KEY_USE_FLUSH_S)
            uses, self._key_uses = self._key_uses, {}
            if uses:
                try:
                    await self._verifier.record_key_uses.remote(uses)
                except Exception as error:  # "last used" is advisory; the next batch tries again
                    logger.warning("could not record key uses: %s", type(error).__name__)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        meter = CallMeter.start(request.headers.get("x-request-id", ""), request.headers.get("content-length"))
        outcome = Outcome()
        deadline = Deadline.after(self._deadline_s)
        try:
            verified = await self._authenticate(request)
            meter.key_prefix, meter.account_id = verified.prefix, verified.account_id
            raw = await read_body(request, *self._body_limits)
            meter.request_bytes = len(raw)
            chat = parse_chat_request(raw)
            route = self._table.resolve(chat.model, chat.mode)
            meter.mode = route.mode or ""
            body = chat.upstream_body()
            order = await self._with_finetunes(attempt_order(route, body, self._rng, verified.scope), verified)
            call = UpstreamCall(meter.request_id, "", body, chat.wants_usage_in_stream, verified.scope)
            if not chat.stream:
                completion = await complete_chat(self._backends, order, call, outcome, deadline)
                usage, estimated = completion.usage, completion.usage is None
                if estimated:
                    usage = estimated_usage(prompt_text(chat.messages), completion_text(completion.body))
                self._answered(meter, outcome)
                record = meter.finish(200, len(completion.body), usage, estimated, self._prices)
                self._record(record)
                return Response(completion.body, media_type="application/json", headers={
                    "Server-Timing": self._timing_header(started, outcome, stream=False),
                    COST_HEADER: cost_units_text(record.cost_micro_units)})
            events = await open_chat_stream(self._backends, order, call, outcome, deadline)
        except GatewayError as error:
            self._answered(meter, outcome)
            self._record(meter.rejected(error, self._prices))
            raise
        except Exception as error:  # our own failure is answered (500) and metered like any other
            logger.error("chat request %s failed: %s", meter.request_id, type(error).__name__)
            failure = internal_error()
            self._answered(meter, outcome)
            self._record(meter.rejected(failure, self._prices))
            raise failure from None
        self._answered(meter, outcome)
        return StreamingResponse(
            self._metered_stream(events, meter, outcome, chat.messages),
            media_type="text/event-stream",
            headers={
                "Server-Timing": self._timing_header(started, outcome, stream=True),
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )

    async def _with_finetunes(self, order: list[Backend], verified: VerifiedKey) -> list[Backend]:
        """Fine-tunes in ``order`` resolved to their live version on their base model's replicas.

        One that is retired, or another account's, is skipped (a mode's other candidates serve);
        when nothing is left, the caller gets its 404."""
        resolved: list[Backend] = []
        missing: GatewayError | None = None
        for backend in order:
            if backend.adapter != FINETUNE_ADAPTER:
                resolved.append(backend)
                continue
            try:
                finetune = await self._finetunes.resolve(backend.model, verified.account_id,
                                                         self._listener.cache_usable, self._listener.healthy)
                adapter = Adapter(finetune.key, Path(finetune.artifact_path), price_name=backend.model)
                resolved.append(self._table.with_adapter(backend.model, finetune.base_model, adapter))
            except GatewayError as error:
                missing = missing or error
        if not resolved and missing is not None:
            raise missing
        return resolved

    def _answered(self, meter: CallMeter, outcome: Outcome) -> None:
        backend = outcome.backend
        if backend is None:
            return
        meter.backend, meter.model = backend.provider, backend.model
        if backend.finetune is not None:  # metered as the fine-tune, at its price or its base model's
            meter.model, meter.finetune = backend.finetune.price_name, backend.finetune.key
            meter.price = self._prices.get(backend.finetune.price_name) or self._prices.get(backend.model)

    async def _metered_stream(self, events: AsyncIterator[bytes], meter: CallMeter, outcome: Outcome,
                              messages) -> AsyncIterator[bytes]:
        """The caller's SSE body; its record is made however it ends (done, failed, or the
        caller gone mid-stream, when the tokens that reached it are estimated and billed)."""
        sent: list[bytes] = []

        def record() -> None:
            usage, estimated = outcome.usage, outcome.usage is None
            if estimated:
                usage = estimated_usage(prompt_text(messages), streamed_text(sent))
            self._record(meter.finish(200, sum(map(len, sent)), usage, estimated, self._prices))

        recorded = False
        try:
            async for piece in events:
                sent.append(piece)
                if outcome.finished:  # recorded before the caller has the end: a replica killed
                    record()          # right after it loses no billed call
                    recorded = True
                yield piece
        finally:
            await events.aclose()  # the caller left: this cancels the upstream request
            if not recorded:
                record()

    def _record(self, record: CallRecord) -> None:
        self._records.add(record)  # to the metadata batcher in batches, off the request's path

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        meter = CallMeter.start(request.headers.get("x-request-id", ""), request.headers.get("content-length"))
        try:
            verified = await self._authenticate(request)
        except GatewayError as error:
            self._record(meter.rejected(error, self._prices))
            raise
        meter.key_prefix, meter.account_id = verified.prefix, verified.account_id
        listing = JSONResponse({"object": "list", "data": [
            self._model_entry(name) for name in self._table.listing(verified.scope)]})
        self._record(meter.finish(200, len(listing.body), None, False, self._prices))
        return listing

    def _model_entry(self, name: str) -> dict:
        backend = self._table.models.get(name)
        entry = {"id": name, "object": "model", "created": 0,
                 "owned_by": backend.provider if backend else "neuroapi"}
        if backend is not None and backend.in_house:
            entry["in_house"] = True
            if name in self._engines:
                entry["engine"] = self._engines[name]
        return entry

    @api.get("/v1/usage")
    async def usage(self, request: Request) -> JSONResponse:
        """This month's and last month's counters, by mode; a session token or an API key."""
        if (presented_key(request) or "").startswith(SESSION_TOKEN_TAG):
            account_id = (await self._logged_in(request)).account_id
        else:
            account_id = (await self._authenticate(request)).account_id
        month = current_month(int(time.time() * 1000))
        store = UsageStore(self._redis)
        return JSONResponse({"object": "usage", "account_id": account_id, "data": [
            usage_view(m, await store.month(account_id, m)) for m in (month, previous_month(month))]})

    # ---- accounts and keys ----------------------------------------------------------------

    @api.post("/v1/auth/signup", status_code=201)
    async def signup(self, request: Request) -> JSONResponse:
        address = self._address(request)
        credentials = parse_body(Credentials, await read_body(request, *self._body_limits))
        admitted = await self._signups.admit(address)  # every sign-up counts, whatever its outcome
        if not admitted.counted:
            raise too_many_signups(admitted.retry_after)
        account = raise_if_error(await self._verifier.signup.remote(credentials.email, credentials.password))
        return JSONResponse({"object": "account", "id": account.id, "email": account.email,
                             "created_at": account.created_at}, status_code=201)

    @api.post("/v1/auth/login")
    async def login(self, request: Request) -> JSONResponse:
        address = self._source(request)
        credentials = parse_body(Credentials, await read_body(request, *self._body_limits))
        issued = raise_if_error(await self._verifier.login.remote(credentials.email, credentials.password))
        if issued is None:
            raise await self._failed(address, GatewayError(401, "Wrong email or password.",
                                                           code="invalid_credentials"))
        token, session = issued
        return JSONResponse({"token": token, "token_type": "bearer", "expires_at": session.expires_at})

    @api.post("/v1/auth/logout")
    async def logout(self, request: Request) -> JSONResponse:
        address = self._source(request)
        if not await self._verifier.logout.remote(presented_key(request) or ""):  # checks the session too
            raise await self._failed(address, invalid_session())
        return JSONResponse({"logged_out": True})

    @api.post("/v1/keys", status_code=201)
    async def create_key(self, request: Request) -> JSONResponse:
        session = await self._logged_in(request)
        new_key = parse_body(NewKey, await read_body(request, *self._body_limits) or b"{}")
        plaintext, info = await self._verifier.create_key.remote(session.account_id, new_key.name)
        return JSONResponse({"object": "api_key", "key": plaintext, **key_fields(info)}, status_code=201)

    @api.get("/v1/keys")
    async def list_keys(self, request: Request) -> JSONResponse:
        session = await self._logged_in(request)
        infos = await self._verifier.list_keys.remote(session.account_id)
        return JSONResponse({"object": "list", "data": [{"object": "api_key", **key_fields(i)} for i in infos]})

    @api.delete("/v1/keys/{prefix}")
    async def revoke_key(self, prefix: str, request: Request) -> JSONResponse:
        session = await self._logged_in(request)
        if not await self._verifier.revoke_key.remote(session.account_id, prefix):
            raise GatewayError(404, f"This account has no key '{prefix}'.", code="key_not_found", param="prefix")
        return JSONResponse({"object": "api_key", "prefix": prefix, "status": "revoked"})

    # ---- operators ------------------------------------------------------------------------

    # The account is named in the body, never the path: Serve's access log records paths.
    @api.post("/v1/admin/account-scope/lookup")
    async def account_scope(self, request: Request) -> JSONResponse:
        await self._admin(request)
        wanted = parse_body(AccountRef, await read_body(request, *self._body_limits))
        account_id, scope = raise_if_error(await self._router.scope.remote(wanted.email))
        return JSONResponse({"object": "account_scope", "account_id": account_id, **scope.as_dict()})

    @api.put("/v1/admin/account-scope")
    async def set_account_scope(self, request: Request) -> JSONResponse:
        actor = await self._admin(request)
        change = parse_body(AccountScopeChange, await read_body(request, *self._body_limits))
        scope = Scope(change.in_house_only, frozenset(change.excluded_providers))
        account_id, confirmed = raise_if_error(await self._router.set_scope.remote(change.email, scope, actor))
        return JSONResponse({"object": "account_scope", "account_id": account_id, **scope.as_dict(),
                             "replicas_confirmed": confirmed})

    @api.get("/v1/admin/finetunes")
    async def finetunes(self, request: Request) -> JSONResponse:
        await self._admin(request)
        return JSONResponse({"object": "list", "data": [
            finetune_fields(live) if live else {"object": "finetune", "name": name, "state": "retired"}
            for name, live in await self._finetune_service.listing()]})

    @api.post("/v1/admin/finetunes", status_code=201)
    async def deploy_finetune(self, request: Request) -> JSONResponse:
        actor = await self._admin(request)
        wanted = parse_body(FineTuneDeploy, await read_body(request, *self._body_limits))
        try:
            live = await self._finetune_service.deploy(Path(wanted.path), wanted.base, wanted.name,
                                                       wanted.account, actor)
        except DeployError as error:
            raise GatewayError(400, f"Not deployed: {error}.", code="invalid_finetune", param=error.where or None) from None
        return JSONResponse(finetune_fields(live), status_code=201)

    @api.get("/v1/admin/finetunes/{name}")
    async def finetune_versions(self, name: str, request: Request) -> JSONResponse:
        await self._admin(request)
        versions = await self._finetune_change(self._finetune_service.show, name)
        return JSONResponse({"object": "list", "data": [finetune_fields(v) for v in versions]})

    @api.post("/v1/admin/finetunes/{name}/rollback")
    async def rollback_finetune(self, name: str, request: Request) -> JSONResponse:
        actor = await self._admin(request)
        return JSONResponse(finetune_fields(await self._finetune_change(self._finetune_service.rollback, name, actor)))

    @api.delete("/v1/admin/finetunes/{name}")
    async def retire_finetune(self, name: str, request: Request) -> JSONResponse:
        actor = await self._admin(request)
        return JSONResponse(finetune_fields(await self._finetune_change(self._finetune_service.retire, name, actor)))

    async def _finetune_change(self, change, name: str, *args):
        try:
            return await change(name, *args)
        except RegistryError as error:
            known = await self._finetune_service.registry.versions(name)
            status, code = (409, "finetune_conflict") if known else (404, "finetune_not_found")
            raise GatewayError(status, f"{error}.", code=code, param="name") from None

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def __del__(self) -> None:
        await self._records.aclose()  # a graceful stop loses no record
        self._flusher.cancel()
        self._engine_names.cancel()
        await self._listener.stop()
        await self._redis.aclose()

