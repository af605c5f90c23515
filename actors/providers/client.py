"""Runs calls against one provider over a pooled ``httpx.AsyncClient``.

Provider-neutral: the adapter says how to build the request and read the answer; this module
owns connections, timeouts, the failure classification and stream batching, and prices each
answer (``usage.cost_units`` in the body, and in the usage chunk a streaming caller asked for).
Everything it returns is a value (never an exception), so it crosses a Ray handle unchanged."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping

import httpx

from actors.errors import GatewayError
from actors.metering import cost_micro_units, cost_units_text
from actors.providers.base import (
    Completion,
    ProviderAdapter,
    StreamEnd,
    StreamFailed,
    StreamStart,
    UpstreamCall,
    UpstreamFailure,
    Usage,
    error_message_of,
    failure_for_status,
    priced_json,
)
from actors.providers.sse import SSEDecoder, encode
from config.catalog import Price

MAX_ERROR_BODY = 64 * 1024


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


async def _error_body(response: httpx.Response) -> bytes:
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= MAX_ERROR_BODY:
            break
    return body


def _unreadable() -> GatewayError:
    return GatewayError(502, "The upstream provider sent an unreadable answer.", "server_error",
                        "upstream_error")


def _status_failure(status: int, body: bytes, started: float) -> UpstreamFailure:
    error, retriable = failure_for_status(status, error_message_of(body))
    return UpstreamFailure(error, retriable, _elapsed_ms(started))


class ProviderClient:
    def __init__(self, adapter: ProviderAdapter, prices: Mapping[str, Price] | None = None):
        spec = adapter.spec
        self.adapter = adapter
        self._prices = dict(prices or {})
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

    def _encode(self, payload: dict, model: str, usage: Usage | None) -> bytes:
        price = self._prices.get(model)
        if price is None or usage is None:
            return json.dumps(payload).encode()
        return priced_json(payload, cost_units_text(cost_micro_units(price, usage.prompt_tokens,
                                                                     usage.completion_tokens)))

    async def complete(self, call: UpstreamCall) -> Completion | UpstreamFailure:
        url, headers, body = self.adapter.request(call, stream=False)
        started = time.perf_counter()
        try:
            response = await self._http.post(url, headers=headers, json=body)
        except httpx.HTTPError as error:
            return _transport_failure(error, started)
        if response.status_code != 200:
            return _status_failure(response.status_code, response.content[:MAX_ERROR_BODY], started)
        try:
            payload, usage = self.adapter.completion(call, response.content)
            answer = self._encode(payload, call.model, usage)
        except (ValueError, KeyError, TypeError, AttributeError):
            return UpstreamFailure(_unreadable(), retriable=True, upstream_ms=_elapsed_ms(started))
        return Completion(answer, usage, _elapsed_ms(started))

    async def stream(
        self, call: UpstreamCall
    ) -> AsyncIterator[StreamStart | UpstreamFailure | bytes | StreamEnd]:
        """Events read in one network read are sent as one item: fewer Ray messages, no wait."""
        url, headers, body = self.adapter.request(call, stream=True)
        started = time.perf_counter()
        try:
            response = await self._http.send(
                self._http.build_request("POST", url, headers=headers, json=body), stream=True
            )
        except httpx.HTTPError as error:
            yield _transport_failure(error, started)
            return
        translator = self.adapter.translator(call)
        started_answer = False
        try:
            if response.status_code != 200:
                yield _status_failure(response.status_code, await _error_body(response), started)
                return
            decoder = SSEDecoder()
            async for piece in response.aiter_bytes():
                out: list[bytes] = []
                for event in decoder.feed(piece):
                    out += translator.feed(event)
                    if translator.finished:
                        break
                if out:
                    if started_answer:
                        yield b"".join(out)
                    else:
                        started_answer = True
                        yield StreamStart(_elapsed_ms(started), b"".join(out))
                if translator.finished:
                    break
            if not translator.finished:
                raise StreamFailed(
                    GatewayError(502, "The upstream provider ended the answer early.",
                                 "server_error", "upstream_error"), retriable=True,
                )
            last = b""
            if translator.usage_chunk is not None:  # the caller asked for usage: last, priced
                last = encode(self._encode(translator.usage_chunk, call.model, translator.usage).decode())
            if not started_answer:  # a finished answer with no events before the end
                started_answer = True
                yield StreamStart(_elapsed_ms(started), last)
            elif last:
                yield last
            yield StreamEnd(translator.usage)
            return
        except StreamFailed as failure:
            error, retriable = failure.error, failure.retriable
        except httpx.HTTPError as transport_error:
            error, retriable = _transport_failure(transport_error, started).error, True
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            error, retriable = _unreadable(), True
        finally:
            # Also runs when the caller goes away mid-stream: the upstream request is cancelled.
            await response.aclose()
        if started_answer:  # after the first byte: end the caller's stream with the error
            yield StreamEnd(translator.usage, error)
        else:
            yield UpstreamFailure(error, retriable, _elapsed_ms(started))
