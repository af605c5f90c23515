"""ProviderClient against the fake providers on loopback: no Ray, real HTTP and SSE."""

import json

import pytest

from actors.providers import ADAPTERS
from actors.providers.client import ProviderClient
from config.settings import load_settings
from core.backend import Completion, StreamEnd, StreamStart, UpstreamFailure
from core.sse import SSEDecoder
from serve_app.runtime import free_port
from tests.support.provider_clients import MODELS, call, client_for, collect, text_of
from tests.support.upstreams import CREDENTIALS, Behaviour


@pytest.mark.parametrize("provider", ["openai", "deepseek", "anthropic"])
async def test_non_streamed_answer_in_openai_shape_with_usage(upstreams, provider):
    result = await client_for(upstreams, provider).complete(call(provider))
    assert isinstance(result, Completion)
    answer = json.loads(result.body)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "Echo: hello world "
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 3)
    assert upstreams.requests[-1].provider == provider


@pytest.mark.parametrize("provider", ["openai", "deepseek", "anthropic"])
async def test_streamed_answer_starts_relays_and_ends_with_usage(upstreams, provider):
    items = await collect(client_for(upstreams, provider), call(provider))
    assert isinstance(items[0], StreamStart) and isinstance(items[-1], StreamEnd)
    assert items[-1].error is None and items[-1].usage.completion_tokens == 3
    assert text_of(items) == "Echo: hello world "
    sent = upstreams.requests[-1].body
    if provider != "anthropic":
        assert sent["stream_options"] == {"include_usage": True}  # always metered


async def test_wrong_credential_is_a_retriable_502_without_the_providers_words(upstreams):
    result = await client_for(upstreams, "openai", credential="sk-wrong").complete(call("openai"))
    assert isinstance(result, UpstreamFailure) and result.retriable
    assert result.error.status == 502 and "sk-" not in result.error.message


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("status, caller_status, retriable", [(503, 502, True), (429, 429, True), (400, 400, False)])
async def test_upstream_error_statuses_before_the_first_byte(upstreams, provider, status, caller_status, retriable):
    upstreams.script(MODELS[provider], Behaviour(status=status), Behaviour(status=status))
    client = client_for(upstreams, provider)
    for result in (await client.complete(call(provider)), (await collect(client, call(provider)))[0]):
        assert isinstance(result, UpstreamFailure)
        assert (result.error.status, result.retriable) == (caller_status, retriable)


async def test_connection_refused_is_a_retriable_502(upstreams):
    client = client_for(upstreams, "openai", base_url=f"http://127.0.0.1:{free_port()}/v1")
    result = await client.complete(call("openai"))
    assert isinstance(result, UpstreamFailure) and result.retriable
    assert (result.error.status, result.error.code) == (502, "upstream_unreachable")


async def test_silence_past_the_read_timeout_is_a_retriable_504(upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(delay_s=1.0))
    result = await client_for(upstreams, "openai", read_timeout=0.2).complete(call("openai"))
    assert isinstance(result, UpstreamFailure) and result.retriable
    assert (result.error.status, result.error.code) == (504, "upstream_timeout")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("failure", ["mid_stream_error", "truncate"])
async def test_failure_after_the_first_byte_ends_with_an_error_not_a_silent_cut(upstreams, provider, failure):
    upstreams.script(MODELS[provider], Behaviour(**{failure: True}))
    items = await collect(client_for(upstreams, provider), call(provider, "one two three four five"))
    assert isinstance(items[0], StreamStart)
    assert isinstance(items[-1], StreamEnd) and items[-1].error is not None
    assert items[-1].error.status == 502
    assert text_of(items) == "Echo: one "  # what arrived before the failure was relayed


async def test_closing_the_stream_early_closes_the_upstream_request(upstreams):
    upstreams.script("gpt-4o-mini", Behaviour(tokens=200, gap_s=0.01))
    stream = client_for(upstreams, "openai").stream(call("openai"))
    assert isinstance(await anext(stream), StreamStart)
    await stream.aclose()
    import asyncio
    for _ in range(100):
        if upstreams.requests[-1].closed_at is not None:
            break
        await asyncio.sleep(0.02)
    assert upstreams.requests[-1].closed_at is not None


@pytest.mark.parametrize("provider", ["openai", "deepseek", "anthropic"])
async def test_answers_carry_their_exact_price_in_usage(upstreams, provider):
    from decimal import Decimal

    from config.catalog import Price
    settings = load_settings(environ={f"NEUROAPI_{provider.upper()}_BASE_URL": upstreams.base_urls()[provider]})
    spec = settings.providers[provider]
    prices = {MODELS[provider]: Price(input=150000, output=600001)}  # cost_units per million tokens
    client = ProviderClient(ADAPTERS[spec.adapter](spec, CREDENTIALS[provider]), prices)
    # 2 prompt and 3 completion tokens: (2 * 150000 + 3 * 600001) / 1e6 = 2.100003 cost_units
    answer = json.loads((await client.complete(call(provider))).body, parse_float=Decimal)
    assert answer["usage"]["cost_units"] == Decimal("2.100003")
    items = await collect(client, call(provider, wants_usage=True))
    raw = b"".join(i.first if isinstance(i, StreamStart) else i for i in items if isinstance(i, (bytes, StreamStart)))
    chunks = [json.loads(e.data, parse_float=Decimal) for e in SSEDecoder().feed(raw)]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["cost_units"] == Decimal("2.100003")
    assert [c for c in chunks[:-1] if not c["choices"]] == []  # the usage chunk comes last, once
    plain = await collect(client, call(provider))
    assert b"cost_units" not in b"".join(i.first if isinstance(i, StreamStart) else i
                                         for i in plain if isinstance(i, (bytes, StreamStart)))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_finished_stream_frees_its_upstream_connection_even_if_the_caller_never_closes_it(upstreams, provider):
    """The ingress cancels a stream once it has its end; a replica's generator left suspended at
    its last item must not keep the upstream connection checked out (the soak saw them pile up
    in CLOSE-WAIT)."""
    client = client_for(upstreams, provider)
    suspended = []
    for _ in range(3):
        stream = client.stream(call(provider))
        async for item in stream:
            if isinstance(item, StreamEnd):
                break  # as a cancelled caller leaves it: neither finished nor closed
        suspended.append(stream)
    pool = client._http._transport._pool
    checked_out = [c for c in pool.connections if not c.is_idle() and not c.is_closed()]
    assert checked_out == []
    for stream in suspended:
        await stream.aclose()
    await client.aclose()
