"""Runs calls against one provider over a pooled ``httpx.AsyncClient``.

Provider-neutral: the adapter says how to build the request and read the answer; this module
owns connections, timeouts, the failure classification and stream batching, and prices each
answer (``usage.cost_units`` in the body, and in the usage chunk a streaming caller asked for).
Everything it returns is a value (never an exception), so it crosses a Ray handle unchanged.

Bounds on every attempt (``AttemptClock``): what is left of the request's deadline
(``UpstreamCall.timeout_s``); the provider's ``first_byte_timeout_s`` until the first real
event (or a non-streamed answer's headers) when another candidate could still serve; then
``stream_idle_timeout_s`` between real events (SSE comments and pings do not count). A body
over ``max_response_bytes`` or an SSE line over the decoder's bound is unreadable (502) and is
never read further."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping

import httpx

from actors.providers.adapter import (
    ProviderAdapter,
    StreamFailed,
    error_message_of,
    failure_for_status,
    unreadable,
)
from config.catalog import Price, ProviderSpec
from core.backend import Completion, Embeddings, StreamEnd, StreamStart, UpstreamCall, UpstreamFailure, Usage
from core.errors import GatewayError, upstream_error
from core.money import cost_units_text, json_bytes, priced_json
from core.sse import SSEDecoder

MAX_ERROR_BODY = 64 * 1024
# Serve's handle messages to and from a replica are capped at 4 MiB (ray.serve constant
# RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH); an answer must fit in one with room to spare.
DEFAULT_MAX_RESPONSE_BYTES = 3 << 20
# An embeddings answer: 2048 inputs of 3072 float32 values in base64 (OpenAI's largest) and its JSON.
MAX_EMBEDDINGS_ANSWER = 40 << 20
# Anything the answer's shape checks can raise; each means "unreadable", never a 500.
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, RecursionError)


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _transport_failure(error: httpx.HTTPError, started: float) -> UpstreamFailure:
    if isinstance(error, httpx.TimeoutException):
        gateway_error = GatewayError(504, "The upstream provider timed out.", "server_error",
                                     "upstream_timeout")
    else:
        gateway_error = GatewayError(502, "The upstream provider could not be reached.",
                                     "server_error", "upstream_unreachable")
    return UpstreamFailure(gateway_error, retriable=True, upstream_ms=_elapsed_ms(started))


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The body, or its first ``limit + 1`` bytes or so: reading stops past the limit."""
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > limit:
            break
    return bytes(body)


def _too_large(limit: int) -> GatewayError:
    return upstream_error(f"The upstream provider's answer is larger than the gateway relays ({limit} bytes).")


_TIMEOUTS = {
    "deadline": "The request ran past its deadline.",
    "first_byte": "The upstream provider did not start answering in time.",
    "idle": "The upstream provider stopped sending.",
}


def timed_out(reason: str) -> GatewayError:
    return GatewayError(504, _TIMEOUTS[reason], "server_error", "upstream_timeout")


class AttemptClock:
    """The time bounds of one attempt, on the event loop's clock.

    ``until()`` is when the current wait must end (None: no bound) and records which bound
    that is, so a ``TimeoutError`` can be told apart as ``reason``."""

    def __init__(self, spec: ProviderSpec, call: UpstreamCall):
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self._deadline = now + call.timeout_s if call.timeout_s is not None else math.inf
        # The first-byte bound leaves time for a fallback; with none left, only the deadline
        # bounds a slow start (a long non-streamed answer or a model that thinks first).
        self._phase_end = now + spec.first_byte_timeout_s if call.more_candidates else math.inf
        self._phase = "first_byte"
        self._idle_s = spec.stream_idle_timeout_s
        self.reason = "deadline"

    def answering(self, idle_bound: bool) -> None:
        """The answer has started: from now on the idle bound (a stream) or only the deadline."""
        self._phase = "idle" if idle_bound else "deadline"
        self.progress()

    def progress(self) -> None:
        """A real event arrived: the idle bound starts again."""
        if self._phase == "idle":
            self._phase_end = self._loop.time() + self._idle_s
        elif self._phase == "deadline":
            self._phase_end = math.inf

    def until(self) -> float | None:
        if self._deadline <= self._phase_end:
            self.reason = "deadline"
            return None if self._deadline == math.inf else self._deadline
        self.reason = self._phase
        return self._phase_end


def _status_failure(status: int, body: bytes, started: float) -> UpstreamFailure:
    error, retriable = failure_for_status(status, error_message_of(body))
    return UpstreamFailure(error, retriable, _elapsed_ms(started))


class ProviderClient:
    def __init__(self, adapter: ProviderAdapter, prices: Mapping[str, Price] | None = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES):
        spec = adapter.spec
        self.adapter = adapter
        self._prices = dict(prices or {})
        self._max_response = max_response_bytes
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=spec.connect_timeout_s, read=spec.read_timeout_s, write=30.0, pool=30.0
            ),
            limits=httpx.Limits(
                max_connections=spec.max_connections,
                max_keepalive_connections=min(spec.max_connections, 256),
            ),
            # A gateway must not follow redirects or pick up proxies from the environment.
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _priced(self, model: str, usage: Usage | None) -> Usage | None:
        return usage and usage.priced(self._prices.get(model))

    @staticmethod
    def _encode(payload: dict, usage: Usage | None) -> bytes:
        if usage is None or usage.cost_micro_units is None:
            return json_bytes(payload)
        return priced_json(payload, cost_units_text(usage.cost_micro_units))

    async def post(self, call: UpstreamCall, url: str, headers: dict[str, str], body: dict,
                   limit: int | None = None) -> bytes | UpstreamFailure:
        """One non-streamed request's 200 body, read within the attempt's bounds and the size bound
        (``limit``, else ``max_response_bytes``)."""
        limit = limit or self._max_response
        started = time.perf_counter()
        clock = AttemptClock(self.adapter.spec, call)
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout_at(clock.until()):
                response = await self._http.send(
                    self._http.build_request("POST", url, headers=headers, json=body), stream=True)
            clock.answering(idle_bound=False)
            if response.status_code != 200:
                async with asyncio.timeout_at(clock.until()):
                    error_body = await _read_at_most(response, MAX_ERROR_BODY)
                return _status_failure(response.status_code, error_body[:MAX_ERROR_BODY], started)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                return UpstreamFailure(_too_large(limit), True, _elapsed_ms(started))
            async with asyncio.timeout_at(clock.until()):
                raw = await _read_at_most(response, limit)
        except TimeoutError:
            return UpstreamFailure(timed_out(clock.reason), retriable=True, upstream_ms=_elapsed_ms(started))
        except httpx.HTTPError as error:
            return _transport_failure(error, started)
        finally:
            if response is not None:
                await asyncio.shield(response.aclose())
        if len(raw) > limit:
            return UpstreamFailure(_too_large(limit), True, _elapsed_ms(started))
        return raw

    async def complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
        started = time.perf_counter()
        raw = await self.post(call, *self.adapter.request(call, stream=False))
        if isinstance(raw, UpstreamFailure):
            return raw
        try:
            payload, usage = self.adapter.completion(call, raw)
            usage = self._priced(call.model, usage)
            answer = self._encode(payload, usage)
        except _UNREADABLE:
            return UpstreamFailure(unreadable(), retriable=True, upstream_ms=_elapsed_ms(started))
        if len(answer) > self._max_response:  # translated or priced, it grew past the bound
            return UpstreamFailure(_too_large(self._max_response), True, _elapsed_ms(started))
        return Completion(answer, usage, _elapsed_ms(started))

    async def embed(self, call: UpstreamCall) -> Embeddings | UpstreamFailure:
        """An embeddings call (``ProviderAdapter.embedding_request``), priced on its input tokens.

        Its answer's bound is its own: base64 vectors for up to 2048 inputs of 3072 dimensions are
        about 34 MB, far past a chat answer's; the vectors then cross Ray as 4 bytes a value."""
        request = self.adapter.embedding_request(call)
        if request is None:
            return UpstreamFailure(GatewayError(400, f"'{call.model}' has no embeddings API here.",
                                                code="model_not_embedding", param="model"), False, 0.0)
        started = time.perf_counter()
        raw = await self.post(call, *request, limit=max(self._max_response, MAX_EMBEDDINGS_ANSWER))
        if isinstance(raw, UpstreamFailure):
            return raw
        try:
            vectors, dimensions, usage = self.adapter.embedded(call, raw)
        except _UNREADABLE:
            return UpstreamFailure(unreadable(), retriable=True, upstream_ms=_elapsed_ms(started))
        return Embeddings(vectors, len(call.body["input"]), dimensions, self._priced(call.model, usage),
                          _elapsed_ms(started))

    async def count_tokens(self, call: UpstreamCall) -> int | UpstreamFailure:
        """The provider's own count of a prompt's input tokens (``ProviderAdapter.count_request``)."""
        request = self.adapter.count_request(call)
        if request is None:
            return UpstreamFailure(GatewayError(400, f"Model '{call.model}' has no token count here.",
                                                code="unsupported_parameter"), False, 0.0)
        started = time.perf_counter()
        raw = await self.post(call, *request)
        if isinstance(raw, UpstreamFailure):
            return raw
        try:
            return self.adapter.counted(raw)
        except _UNREADABLE:
            return UpstreamFailure(unreadable(), retriable=True, upstream_ms=_elapsed_ms(started))

    async def stream(
        self, call: UpstreamCall
    ) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
        """Events read in one network read are sent as one item: fewer Ray messages, no wait.

        Each read is bounded on its own (never across a ``yield``: the caller's time between
        items is not the upstream's silence)."""
        url, headers, body = self.adapter.request(call, stream=True)
        started = time.perf_counter()
        clock = AttemptClock(self.adapter.spec, call)
        try:
            async with asyncio.timeout_at(clock.until()):
                response = await self._http.send(
                    self._http.build_request("POST", url, headers=headers, json=body), stream=True
                )
        except TimeoutError:
            yield UpstreamFailure(timed_out(clock.reason), retriable=True, upstream_ms=_elapsed_ms(started))
            return
        except httpx.HTTPError as error:
            yield _transport_failure(error, started)
            return
        translator = self.adapter.translator(call)
        started_answer = False
        try:
            if response.status_code != 200:
                async with asyncio.timeout_at(clock.until()):
                    error_body = await _read_at_most(response, MAX_ERROR_BODY)
                yield _status_failure(response.status_code, error_body[:MAX_ERROR_BODY], started)
                return
            decoder = SSEDecoder()
            reader = response.aiter_bytes()
            while not translator.finished:
                async with asyncio.timeout_at(clock.until()):
                    piece = await anext(reader, None)
                if piece is None:
                    break
                out: list[bytes] = []
                progress = False
                for event in decoder.feed(piece):
                    progress = progress or not translator.is_keepalive(event)
                    out += translator.feed(event)
                    if translator.finished:
                        break
                if out:
                    if started_answer:
                        yield b"".join(out)
                    else:
                        started_answer = True
                        clock.answering(idle_bound=True)
                        yield StreamStart(_elapsed_ms(started), b"".join(out))
                if progress:
                    clock.progress()
            # Closed now, before the last items are yielded: a caller that cancels the stream
            # once it has them (the ingress does) would otherwise leave the connection open.
            await response.aclose()
            if not translator.finished:
                raise StreamFailed(
                    upstream_error("The upstream provider ended the answer early."), retriable=True,
                )
            usage = self._priced(call.model, translator.usage)
            last = translator.closing(lambda payload: self._encode(payload, usage))
            if not started_answer:  # a finished answer with no events before the end
                started_answer = True
                yield StreamStart(_elapsed_ms(started), last)
            elif last:
                yield last
            yield StreamEnd(usage)
            return
        except StreamFailed as failure:
            error, retriable = failure.error, failure.retriable
        except TimeoutError:
            error, retriable = timed_out(clock.reason), True
        except httpx.HTTPError as transport_error:
            error, retriable = _transport_failure(transport_error, started).error, True
        except _UNREADABLE:  # a malformed event, an over-long line, bytes that are not UTF-8
            error, retriable = unreadable(), True
        finally:
            # Also runs when the caller goes away mid-stream: the upstream request is cancelled.
            # Shielded: a second cancellation must not leave the connection half-closed.
            await asyncio.shield(response.aclose())
        if started_answer:  # after the first byte: end the caller's stream with the error
            yield StreamEnd(self._priced(call.model, translator.usage), error)
        else:
            yield UpstreamFailure(error, retriable, _elapsed_ms(started))
