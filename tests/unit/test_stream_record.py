"""A stream's call record is made before its last piece reaches the caller: an ingress replica
killed the instant the caller has ``[DONE]`` (before its generator resumes) loses no billed call."""

from actors.metering.call_meter import CallMeter
from serve_app.endpoints.chat.fallback import Outcome, open_chat_stream
from serve_app.endpoints.model_calls import ModelCalls
from tests.support.chat_backends import CALL, ORDER, DirectBackends


def metered_stream_of(records: list):
    return ModelCalls(None, None, None, records.append, prices={}, deadline_s=30.0).metered_stream


async def test_the_record_exists_before_the_caller_has_the_end_of_the_stream(upstreams):
    records: list = []
    outcome = Outcome()
    events = await open_chat_stream(DirectBackends(upstreams), ORDER, CALL, outcome)
    stream = metered_stream_of(records)(events, CallMeter.start("req-stream", "10"), outcome,
                                        CALL.body["messages"])
    received = b""
    while not received.endswith(b"data: [DONE]\n\n"):
        received += await anext(stream)
        if not received.endswith(b"data: [DONE]\n\n"):
            assert records == []  # mid-stream: not yet
    # The caller has everything; the generator has not resumed (as if the replica died now).
    assert [(r.request_id, r.status, r.response_bytes) for r in records] == [("req-stream", 200, len(received))]
    await stream.aclose()
    assert len(records) == 1  # and it is not recorded twice
