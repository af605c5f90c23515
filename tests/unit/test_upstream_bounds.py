"""Bounded waits on upstreams (issue 13, item 6): a request deadline across candidates, a
first-byte bound per attempt that leaves a fallback time, an idle bound on streams that only
real events reset, and the ingress's own safety net for a backend that never answers.

No Ray and no wall-clock assertions: tiny bounds, and the outcome (status, code, who was
tried) is what is checked."""

import asyncio
import json

import pytest

from actors.routing.table import Backend
from core.backend import StreamEnd, StreamStart, UpstreamCall, UpstreamFailure
from core.errors import GatewayError
from serve_app.endpoints.chat import fallback as chat
from serve_app.endpoints.chat.fallback import Deadline, Outcome, complete_chat, open_chat_stream
from tests.support.chat_backends import CALL, ORDER
from tests.support.provider_clients import MODELS, call, client_for, collect, text_of
from tests.support.upstreams import Behaviour

HANG = Behaviour(delay_s=5.0)  # no headers for far longer than any bound below


def bounded_client(upstreams, provider: str, first_byte: float = 30.0, idle: float = 30.0):
    client = client_for(upstreams, provider)
    spec = client.adapter.spec.model_copy(update={"first_byte_timeout_s": first_byte, "stream_idle_timeout_s": idle})
    client.adapter.spec = spec
    return client


class Direct:
    """Backends over provider clients with small bounds (deepseek first, anthropic second)."""

    def __init__(self, upstreams, first_byte: float = 0.3, idle: float = 0.3):
        self.clients = {p: bounded_client(upstreams, p, first_byte, idle) for p in ("deepseek", "anthropic")}

    async def complete(self, backend, call):
        return await self.clients[backend.provider].complete(call)

    def stream(self, backend, call):
        return self.clients[backend.provider].stream(call)


def attempt(provider: str, timeout_s=None, more=False, **extra) -> UpstreamCall:
    base = call(provider, "one two three four five six", **extra)
    return UpstreamCall(base.request_id, base.model, base.body, False, timeout_s=timeout_s, more_candidates=more)


# ---- one attempt, in the proxy's client -----------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_a_hung_upstream_with_a_fallback_left_fails_at_the_first_byte_bound(upstreams, stream):
    upstreams.script("gpt-4o-mini", HANG)
    client = bounded_client(upstreams, "openai", first_byte=0.2)
    result = (await collect(client, attempt("openai", more=True)))[0] if stream else \
        await client.complete(attempt("openai", more=True))
    assert isinstance(result, UpstreamFailure) and result.retriable
    assert (result.error.status, result.error.code) == (504, "upstream_timeout")
    assert "did not start answering" in result.error.message


@pytest.mark.parametrize("stream", [False, True])
async def test_the_last_candidate_is_bounded_by_the_deadline_not_the_first_byte_bound(upstreams, stream):
    # Nothing to fall back to: a slow start is not cut at the first-byte bound...
    upstreams.script("gpt-4o-mini", Behaviour(delay_s=0.5))
    client = bounded_client(upstreams, "openai", first_byte=0.1)
    if stream:
        items = await collect(client, attempt("openai", timeout_s=10))
        assert isinstance(items[0], StreamStart) and items[-1].error is None
    else:
        assert json.loads((await client.complete(attempt("openai", timeout_s=10))).body)["choices"]
    # ...but the deadline is.
    upstreams.script("gpt-4o-mini", HANG)
    result = (await collect(client, attempt("openai", timeout_s=0.2)))[0] if stream else \
        await client.complete(attempt("openai", timeout_s=0.2))
    assert isinstance(result, UpstreamFailure)
    assert (result.error.status, result.error.message) == (504, "The request ran past its deadline.")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_keep_alives_alone_never_start_an_answer(upstreams, provider):
    # SSE comments (OpenAI) or ping events (Anthropic), forever: a retriable failure, not a hang.
    upstreams.script(MODELS[provider], Behaviour(comments_only=True))
    items = await collect(bounded_client(upstreams, provider, first_byte=0.3), attempt(provider, more=True))
    assert len(items) == 1 and isinstance(items[0], UpstreamFailure) and items[0].retriable
    assert items[0].error.status == 504


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_stream_that_goes_quiet_ends_with_an_error_after_what_arrived(upstreams, provider):
    # Two tokens, then only keep-alives: they do not reset the idle bound.
    upstreams.script(MODELS[provider], Behaviour(stall_after=2))
    items = await collect(bounded_client(upstreams, provider, idle=0.3), attempt(provider, timeout_s=30))
    assert isinstance(items[0], StreamStart)
    assert text_of(items) == "Echo: one "
    assert isinstance(items[-1], StreamEnd)
    assert (items[-1].error.status, items[-1].error.message) == (504, "The upstream provider stopped sending.")


async def test_a_slow_but_steady_stream_is_not_idle(upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(tokens=6, gap_s=0.1))
    items = await collect(bounded_client(upstreams, "openai", idle=0.5), attempt("openai", timeout_s=30))
    assert items[-1].error is None and text_of(items).count("tok") == 6


async def test_the_deadline_ends_a_stream_that_is_still_sending(upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(tokens=200, gap_s=0.02))
    items = await collect(bounded_client(upstreams, "openai"), attempt("openai", timeout_s=0.5))
    assert isinstance(items[0], StreamStart)
    assert items[-1].error.status == 504 and "deadline" in items[-1].error.message
    assert text_of(items).count("tok") < 200


# ---- across candidates, in the ingress's chat logic ----------------------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_a_hung_first_candidate_leaves_time_for_the_fallback(upstreams, stream):
    upstreams.script("deepseek-chat", HANG)
    backends, outcome = Direct(upstreams, first_byte=0.2), Outcome()
    if stream:
        events = await open_chat_stream(backends, ORDER, CALL, outcome, Deadline.after(30))
        body = b"".join([piece async for piece in events])
        assert b"claude-haiku-4-5" in body and body.endswith(b"data: [DONE]\n\n")
    else:
        completion = await complete_chat(backends, ORDER, CALL, outcome, Deadline.after(30))
        assert json.loads(completion.body)["model"] == "claude-haiku-4-5"
    assert [r.provider for r in upstreams.requests] == ["deepseek", "anthropic"]


@pytest.mark.parametrize("stream", [False, True])
async def test_every_candidate_hung_is_a_504_by_the_deadline(upstreams, stream):
    upstreams.script("deepseek-chat", HANG)
    upstreams.script("claude-haiku-4-5", HANG)
    backends = Direct(upstreams, first_byte=0.2)
    with pytest.raises(GatewayError) as error:
        if stream:
            await open_chat_stream(backends, ORDER, CALL, Outcome(), Deadline.after(0.6))
        else:
            await complete_chat(backends, ORDER, CALL, Outcome(), Deadline.after(0.6))
    assert (error.value.status, error.value.code) == (504, "upstream_timeout")
    assert [r.provider for r in upstreams.requests] == ["deepseek", "anthropic"]


async def test_no_candidate_is_tried_once_the_deadline_has_passed(upstreams):
    with pytest.raises(GatewayError) as error:
        await complete_chat(Direct(upstreams), ORDER, CALL, Outcome(), Deadline.after(-1))
    assert error.value.status == 504
    assert upstreams.requests == []


async def test_each_attempt_is_told_what_is_left_and_whether_a_fallback_follows():
    seen: list[UpstreamCall] = []

    class Recording:
        async def complete(self, backend, call):
            seen.append(call)
            return UpstreamFailure(GatewayError(502, "x", "server_error", "upstream_error"), True, 0.0)

    with pytest.raises(GatewayError):
        await complete_chat(Recording(), ORDER, CALL, Outcome(), Deadline.after(100))
    assert [c.more_candidates for c in seen] == [True, False]
    assert all(0 < c.timeout_s <= 100 for c in seen) and seen[1].timeout_s <= seen[0].timeout_s


class Silent:
    """A backend that never answers and ignores timeout_s (a dead proxy, a stuck model)."""

    async def complete(self, backend, call):
        await asyncio.sleep(3600)

    async def stream(self, backend, call):
        await asyncio.sleep(3600)
        yield None


class StartsThenStops:
    async def complete(self, backend, call):
        raise AssertionError

    async def stream(self, backend, call):
        yield StreamStart(1.0, b'data: {"choices": []}\n\n')
        await asyncio.sleep(3600)


@pytest.fixture
def short_margin(monkeypatch):
    monkeypatch.setattr(chat, "SAFETY_MARGIN_S", 0.1)


async def test_the_ingress_stops_waiting_for_a_backend_that_ignores_the_deadline(short_margin):
    one = [Backend("m", "p", "p")]
    with pytest.raises(GatewayError) as error:
        await complete_chat(Silent(), one, CALL, Outcome(), Deadline.after(0.2))
    assert error.value.status == 504
    with pytest.raises(GatewayError) as error:
        await open_chat_stream(Silent(), one, CALL, Outcome(), Deadline.after(0.2))
    assert error.value.status == 504


async def test_a_stream_whose_backend_stops_mid_way_ends_with_an_error_event_by_the_deadline(short_margin):
    outcome = Outcome()
    events = await open_chat_stream(StartsThenStops(), [Backend("m", "p", "p")], CALL, outcome, Deadline.after(0.3))
    body = b"".join([piece async for piece in events])
    last = json.loads(body.strip().split(b"\n\n")[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "upstream_timeout" and b"[DONE]" not in body
    assert outcome.error.status == 504


# ---- the ingress meters its own failures -----------------------------------------------------

async def test_a_failure_of_the_gateway_itself_is_a_metered_500_in_our_shape(monkeypatch):
    """An unexpected exception on the chat path (here: a backend handle that raises) is answered
    500 ``internal_error`` and gets a call record, like every other answered request."""
    from types import SimpleNamespace

    from actors.keys.store import VerifiedKey
    from actors.metering.call_meter import CallMeter
    from serve_app.endpoints.chat.service import ChatService
    from serve_app.endpoints.model_calls import ModelCalls

    class Broken:
        async def complete(self, backend, call):
            raise RuntimeError("a handle call failed")

    async def authenticate():
        return VerifiedKey(prefix="neuro_abcdefgh", account_id="acct", scope=None)

    async def body():
        return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()

    records = []
    table = SimpleNamespace(resolve=lambda model, mode: SimpleNamespace(mode=None))
    service = ChatService(ModelCalls(table, Broken(), None, records.append, prices={}, deadline_s=30.0))
    monkeypatch.setattr("serve_app.endpoints.model_calls.attempt_order",
                        lambda *_, **__: [Backend("gpt-4o-mini", "openai", "openai")])
    with pytest.raises(GatewayError) as error:
        await service.answer(CallMeter.start("req-500", "60"), authenticate, body)
    assert (error.value.status, error.value.code) == (500, "internal_error")
    assert [(r.request_id, r.status) for r in records] == [("req-500", 500)]
