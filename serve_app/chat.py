"""One chat completion: try the candidates in order, fall back before the first byte, relay.

Plain async code over a ``Backends`` object (Ray handles in the ingress, direct clients in unit
tests), so the fallback and streaming rules are tested without Ray."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from actors.errors import GatewayError
from actors.providers.base import (
    Completion,
    StreamEnd,
    StreamStart,
    UpstreamCall,
    UpstreamFailure,
    Usage,
)
from actors.providers.sse import DONE, encode
from actors.routing import Backend

logger = logging.getLogger("neuroapi.chat")
StreamItem = StreamStart | UpstreamFailure | bytes | StreamEnd


class Backends(Protocol):
    async def complete(self, backend: Backend, call: UpstreamCall) -> Completion | UpstreamFailure: ...

    def stream(self, backend: Backend, call: UpstreamCall) -> AsyncIterator[StreamItem]: ...


@dataclass
class Outcome:
    """What the caller got, for timing and metering; filled in as the answer goes out."""

    backend: Backend | None = None
    upstream_ms: float = 0.0
    usage: Usage | None = None
    error: GatewayError | None = None


def _no_candidate() -> GatewayError:
    return GatewayError(502, "No upstream could serve the request.", "server_error", "upstream_error")


async def complete_chat(
    backends: Backends, order: Sequence[Backend], call: UpstreamCall, outcome: Outcome
) -> Completion:
    failure: UpstreamFailure | None = None
    for backend in order:
        result = await backends.complete(backend, _for(call, backend))
        outcome.backend, outcome.upstream_ms = backend, outcome.upstream_ms + result.upstream_ms
        if isinstance(result, Completion):
            outcome.usage = result.usage
            return result
        failure = result
        _note(backend, result)
        if not result.retriable:
            break
    raise failure.error if failure else _no_candidate()


async def open_chat_stream(
    backends: Backends, order: Sequence[Backend], call: UpstreamCall, outcome: Outcome
) -> AsyncIterator[bytes]:
    """Returns once an upstream has sent its first byte, with the SSE body to send on.

    Raises the last failure's GatewayError when no candidate got that far."""
    failure: UpstreamFailure | None = None
    for backend in order:
        events = backends.stream(backend, _for(call, backend))
        first = await anext(events, None)
        outcome.backend = backend
        if isinstance(first, StreamStart):
            outcome.upstream_ms += first.upstream_ms
            return _relay(first, events, outcome)
        await events.aclose()
        if not isinstance(first, UpstreamFailure):
            first = UpstreamFailure(_no_candidate(), retriable=True, upstream_ms=0.0)
        outcome.upstream_ms += first.upstream_ms
        failure = first
        _note(backend, first)
        if not first.retriable:
            break
    raise failure.error if failure else _no_candidate()


def _note(backend: Backend, failure: UpstreamFailure) -> None:
    logger.info("upstream %s/%s failed (%s)%s", backend.provider, backend.model, failure.error.code,
                "; trying the next candidate" if failure.retriable else "")


def _for(call: UpstreamCall, backend: Backend) -> UpstreamCall:
    return replace(call, model=backend.model, adapter=backend.finetune)


def error_event(error: GatewayError) -> bytes:
    """How a failure after the first byte reaches the caller: OpenAI's SDKs raise on it."""
    return encode(json.dumps(error.body()))


async def _relay(first: StreamStart, events: AsyncIterator[StreamItem], outcome: Outcome) -> AsyncIterator[bytes]:
    try:
        if first.first:
            yield first.first
        async for item in events:
            if isinstance(item, bytes):
                yield item
            elif isinstance(item, StreamEnd):
                outcome.usage = item.usage
                if item.error is not None:
                    outcome.error = item.error
                    yield error_event(item.error)
                else:
                    yield DONE
                return
        outcome.error = GatewayError(502, "The upstream stream ended without finishing.",
                                     "server_error", "upstream_error")
        yield error_event(outcome.error)
    except Exception as error:  # a proxy replica died mid-stream: say so, then close cleanly
        logger.warning("stream relay failed: %s", type(error).__name__)
        outcome.error = GatewayError(502, "The gateway lost the upstream stream.", "server_error",
                                     "upstream_error")
        yield error_event(outcome.error)
    finally:
        await events.aclose()
