"""One call's metering record as the ingress builds it (actors.metering.call_meter): what it
is priced at, what it says about an error answer, and the text it estimates tokens from when
the upstream gave no usage. Plain Python."""

from __future__ import annotations

import json

from actors.metering.call_meter import (
    CallMeter,
    completion_text,
    estimated_usage,
    prompt_text,
    streamed_text,
)
from config.catalog import Price
from core.backend import Usage
from core.errors import GatewayError, model_not_found

PRICES = {"gpt-4o-mini": Price(input=150000, output=600000)}  # US$0.15 / US$0.60 per million tokens
FINETUNE_PRICE = Price(input=1000000, output=2000000)


def meter(**fields) -> CallMeter:
    started = CallMeter.start("req-1", "42")
    for name, value in {"key_prefix": "neuro_abcd1234", "account_id": "acct_1", "mode": "fast",
                        "backend": "openai", "model": "gpt-4o-mini", **fields}.items():
        setattr(started, name, value)
    return started


# ---- start -----------------------------------------------------------------------------------

def test_request_bytes_come_from_content_length_and_anything_else_counts_zero():
    assert CallMeter.start("r", "1234").request_bytes == 1234
    for declared in (None, "", "-5", "12abc", "1e3", " 12"):
        assert CallMeter.start("r", declared).request_bytes == 0, declared


def test_start_stamps_the_request_and_knows_nothing_else_yet():
    import time

    before = int(time.time() * 1000)
    started = CallMeter.start("req-9", "10")
    assert started.request_id == "req-9" and before <= started.timestamp_ms <= int(time.time() * 1000)
    record = started.finish(400, 10, None, False, PRICES)
    assert (record.key_prefix, record.account_id, record.mode, record.backend, record.model, record.finetune) == \
        ("", "", "", "", "", "")


# ---- finish ----------------------------------------------------------------------------------

def test_finish_prices_the_usage_at_the_models_price():
    record = meter().finish(200, 512, Usage(1000, 200), False, PRICES)
    assert record.cost_micro_units == 1000 * 150000 + 200 * 600000
    assert (record.status, record.request_bytes, record.response_bytes) == (200, 42, 512)
    assert (record.prompt_tokens, record.completion_tokens, record.estimated) == (1000, 200, False)
    assert (record.request_id, record.key_prefix, record.account_id, record.mode, record.backend, record.model) == \
        ("req-1", "neuro_abcd1234", "acct_1", "fast", "openai", "gpt-4o-mini")


def test_a_fine_tunes_own_price_wins_over_its_models():
    record = meter(model="gpt-4o-mini", finetune="support-bot@v3", price=FINETUNE_PRICE).finish(
        200, 512, Usage(1000, 200), False, PRICES)
    assert record.cost_micro_units == 1000 * 1000000 + 200 * 2000000
    assert record.finetune == "support-bot@v3"
    # A fine-tune named "ft:NAME" with a price of its own, whatever the catalog has for that name.
    priced_name = meter(model="ft:support-bot", price=FINETUNE_PRICE)
    assert priced_name.finish(200, 1, Usage(1, 1), False, {"ft:support-bot": Price(input=1, output=1)}) \
        .cost_micro_units == 3000000


def test_a_model_without_a_price_or_a_call_without_usage_costs_nothing():
    assert meter(model="unpriced").finish(200, 10, Usage(1000, 200), False, PRICES).cost_micro_units == 0
    record = meter().finish(502, 10, None, False, PRICES)
    assert (record.prompt_tokens, record.completion_tokens, record.cost_micro_units) == (0, 0, 0)


def test_estimated_usage_is_flagged_and_priced_like_reported_usage():
    usage = estimated_usage("x" * 40, "y" * 9)  # 4 bytes a token, rounded up
    assert usage == Usage(10, 3)
    record = meter().finish(200, 99, usage, True, PRICES)
    assert record.estimated is True
    assert record.cost_micro_units == 10 * 150000 + 3 * 600000
    assert meter().finish(200, 99, usage, False, PRICES).estimated is False


def test_usage_priced_by_the_backend_is_recorded_as_priced_not_priced_again():
    """The answer's usage.cost_units and the record come from one computation: the backend's."""
    priced = Usage(1000, 500).priced(FINETUNE_PRICE)  # e.g. a replica that knows a newer price
    record = meter().finish(200, 10, priced, False, PRICES)
    assert record.cost_micro_units == priced.cost_micro_units == 1000 * 1000000 + 500 * 2000000


# ---- rejected --------------------------------------------------------------------------------

def test_a_rejected_call_records_the_error_status_and_the_exact_bytes_the_caller_got():
    error = GatewayError(429, "Slow down: «résumé» ✓", code="rate_limited", headers={"Retry-After": "3"})
    record = meter().rejected(error, PRICES)
    body = error.rendered()
    assert record.status == 429
    assert record.response_bytes == len(body) > len(error.message)  # bytes, not characters
    assert len(body) != len(json.dumps(error.body()))  # compact UTF-8, as it is sent, not ASCII-escaped
    assert (record.prompt_tokens, record.completion_tokens, record.cost_micro_units, record.estimated) == \
        (0, 0, 0, False)
    assert record.request_bytes == 42 and record.account_id == "acct_1"


def test_a_call_rejected_before_its_key_was_known_has_no_account():
    record = CallMeter.start("req-2", None).rejected(model_not_found("nope"), PRICES)
    assert (record.status, record.account_id, record.key_prefix, record.model) == (404, "", "", "")
    assert record.response_bytes == len(model_not_found("nope").rendered())


# ---- the text tokens are estimated from ------------------------------------------------------

def test_prompt_text_joins_the_messages_their_text_parts_and_tool_calls():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                             {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                                             {"type": "text", "text": "there"}]},
                {"role": "assistant", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    assert prompt_text(messages) == 'Be brief.\nHello  there\nweather {"city": "Oslo"}\nsunny'
    assert prompt_text([]) == ""


def test_completion_text_reads_every_choice_and_never_fails():
    body = json.dumps({"choices": [{"message": {"content": "Hello"}}, {"message": {"content": " world"}},
                                   {"message": {"content": None}}, {"message": {}}]}).encode()
    assert completion_text(body) == "Hello world"
    for broken in (b"", b"not json", b"[1, 2]", b'{"choices": 5}', b'{"choices": [{"message": "x"}]}',
                   b"[" * 100_000):
        assert completion_text(broken) == ""


def chunk(content) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": content}}]}).encode() + b"\n\n"


def test_streamed_text_is_the_content_that_reached_the_caller_however_it_was_split():
    stream = (b"data: " + json.dumps({"choices": [{"delta": {"role": "assistant", "content": ""}}]}).encode()
              + b"\n\n" + chunk("Hel") + chunk("lo") + chunk(None)
              + b'data: {"error": {"message": "upstream failed"}}\n\n' + b"data: [DONE]\n\n")
    assert streamed_text([stream]) == "Hello"
    pieces = [stream[i:i + 7] for i in range(0, len(stream), 7)]  # events cut anywhere
    assert streamed_text(pieces) == "Hello"
    assert streamed_text([chunk("Hel") + b"data: {\"choi"]) == "Hel"  # the caller left mid-event
    assert streamed_text([]) == ""
