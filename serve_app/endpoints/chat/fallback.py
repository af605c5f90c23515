"""One chat completion: try the candidates in order, fall back before the first byte, relay.

Plain async code over a ``Backends`` object (Ray handles in the ingress, direct clients in unit
tests), so the fallback and streaming rules are tested without Ray.

A ``Deadline`` bounds the whole call: each attempt is told what is left (``timeout_s``, which
the proxy enforces), and is also bounded here, a little later, so that a proxy or model
replica that never answers cannot hold the caller: before the first byte that is a 504, after
it an error event."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from actors.routing.table import Backend, takes_native
from core.backend import Completion, StreamEnd, StreamStart, UpstreamCall, UpstreamFailure, Usage
from core.errors import GatewayError, upstream_error
from core.sse import DONE, encode

logger = logging.getLogger("neuroapi.chat")
StreamItem = StreamStart | UpstreamFailure | bytes | StreamEnd
# How long after the deadline the ingress stops waiting for a backend that should have
# answered its own timeout already (it is dead, or it ignores timeout_s).
SAFETY_MARGIN_S = 2.0


@dataclass(frozen=True)
class Deadline:
    """When a call must be over, on the event loop's clock."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(asyncio.get_running_loop().time() + seconds)

    def remaining(self) -> float:
        return self.at - asyncio.get_running_loop().time()

    def safety_net(self) -> float:
        """When the ingress gives up on a backend that has not honoured the deadline itself."""
        return self.at + SAFETY_MARGIN_S


def past_deadline() -> GatewayError:
    return GatewayError(504, "The request ran past its deadline.", "server_error", "upstream_timeout")


class Backends(Protocol):
    async def complete(self, backend: Backend, call: UpstreamCall) -> Completion | UpstreamFailure: ...

    def stream(self, backend: Backend, call: UpstreamCall) -> AsyncIterator[StreamItem]: ...

    async def count_tokens(self, backend: Backend, call: UpstreamCall) -> int | UpstreamFailure: ...


@dataclass
class Outcome:
    """What the caller got, for timing and metering; filled in as the answer goes out."""

    backend: Backend | None = None
    upstream_ms: float = 0.0
    usage: Usage | None = None
    error: GatewayError | None = None
    finished: bool = False  # the stream's last piece (``[DONE]`` or an error event) is being sent


@dataclass(frozen=True)
class Framing:
    """How a stream ends for its caller: the last event of a finished answer, and the event that
    carries a failure after the first byte."""

    done: bytes
    error: Callable[[GatewayError], bytes]


def error_event(error: GatewayError) -> bytes:
    """How a failure after the first byte reaches the caller: OpenAI's SDKs raise on it."""
    return encode(json.dumps(error.body()))


OPENAI_FRAMING = Framing(DONE, error_event)


def _no_candidate() -> GatewayError:
    return upstream_error("No upstream could serve the request.")


async def complete_chat(
    backends: Backends, order: Sequence[Backend], call: UpstreamCall, outcome: Outcome,
    deadline: Deadline | None = None,
) -> Completion:
    failure: UpstreamFailure | None = None
    for index, backend in enumerate(order):
        attempt = _attempt(call, backend, deadline, more=index + 1 < len(order))
        if attempt is None:
            raise past_deadline()
        try:
            async with asyncio.timeout_at(deadline and deadline.safety_net()):
                result = await backends.complete(backend, attempt)
        except TimeoutError:
            result = _unanswered(backend)
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
    backends: Backends, order: Sequence[Backend], call: UpstreamCall, outcome: Outcome,
    deadline: Deadline | None = None, native_framing: Framing | None = None,
) -> AsyncIterator[bytes]:
    """Returns once an upstream has sent its first byte, with the SSE body to send on.

    Raises the last failure's GatewayError when no candidate got that far. A backend that answers
    in Anthropic's own shape (``call.native``) ends with ``native_framing``; others in OpenAI's."""
    failure: UpstreamFailure | None = None
    for index, backend in enumerate(order):
        attempt = _attempt(call, backend, deadline, more=index + 1 < len(order))
        if attempt is None:
            raise past_deadline()
        events = backends.stream(backend, attempt)
        try:
            async with asyncio.timeout_at(deadline and deadline.safety_net()):
                first = await anext(events, None)
        except TimeoutError:
            first = _unanswered(backend)
        outcome.backend = backend
        if isinstance(first, StreamStart):
            outcome.upstream_ms += first.upstream_ms
            framing = native_framing if attempt.native is not None and native_framing else OPENAI_FRAMING
            return _relay(first, events, outcome, deadline, framing)
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


def _attempt(call: UpstreamCall, backend: Backend, deadline: Deadline | None, more: bool) -> UpstreamCall | None:
    """The call for one candidate, with what is left of the deadline (None: nothing is left)."""
    timeout_s = deadline.remaining() if deadline else None
    if timeout_s is not None and timeout_s <= 0:
        return None
    attempt = replace(call, model=backend.model, adapter=backend.finetune, timeout_s=timeout_s, more_candidates=more)
    if call.native is not None:  # only an Anthropic backend gets the caller's own body, and only it
        attempt = replace(attempt, body={}) if takes_native(backend) else replace(attempt, native=None, native_betas=())
    return attempt


def _unanswered(backend: Backend) -> UpstreamFailure:
    logger.warning("backend %s gave no answer by the deadline", backend.deployment)
    return UpstreamFailure(past_deadline(), retriable=True, upstream_ms=0.0)


def _last(outcome: Outcome, piece: bytes) -> bytes:
    """Marks ``piece`` as the stream's last, so its call is recorded before the caller has it all."""
    outcome.finished = True
    return piece


async def _relay(first: StreamStart, events: AsyncIterator[StreamItem], outcome: Outcome,
                 deadline: Deadline | None = None, framing: Framing = OPENAI_FRAMING) -> AsyncIterator[bytes]:
    try:
        if first.first:
            yield first.first
        while True:
            try:  # bounded per item, never across the yield (the caller's pace is not ours)
                async with asyncio.timeout_at(deadline and deadline.safety_net()):
                    item = await anext(events, None)
            except TimeoutError:
                outcome.error = past_deadline()
                yield _last(outcome, framing.error(outcome.error))
                return
            if item is None:
                break
            if isinstance(item, bytes):
                yield item
            elif isinstance(item, StreamEnd):
                outcome.usage = item.usage
                if item.error is not None:
                    outcome.error = item.error
                    yield _last(outcome, framing.error(item.error))
                else:
                    yield _last(outcome, framing.done)
                return
        outcome.error = upstream_error("The upstream stream ended without finishing.")
        yield _last(outcome, framing.error(outcome.error))
    except Exception as error:  # a proxy replica died mid-stream: say so, then close cleanly
        logger.warning("stream relay failed: %s", type(error).__name__)
        outcome.error = upstream_error("The gateway lost the upstream stream.")
        yield _last(outcome, framing.error(outcome.error))
    finally:
        await events.aclose()
