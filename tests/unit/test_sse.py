from hypothesis import given
from hypothesis import strategies as st

from actors.providers.sse import DONE, SSEDecoder, SSEEvent, encode

STREAM = (
    b"event: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
    b": keep-alive\n\n"
    b"data: line one\ndata: line two\n\n"
    b"data: caf\xc3\xa9\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("message_start", '{"a": 1}'),
    SSEEvent(None, "line one\nline two"),
    SSEEvent(None, "café"),
    SSEEvent(None, "[DONE]"),
]


def test_decodes_events_comments_multiline_and_crlf():
    assert SSEDecoder().feed(STREAM) == EXPECTED


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), unique=True, max_size=12))
def test_any_split_of_the_bytes_gives_the_same_events(cuts):
    decoder, events, start = SSEDecoder(), [], 0
    for cut in sorted(cuts) + [len(STREAM)]:
        events += decoder.feed(STREAM[start:cut])
        start = cut
    assert events == EXPECTED


def test_encoder_output_decodes_back():
    assert SSEDecoder().feed(encode('{"x": "y"}') + DONE) == [SSEEvent(None, '{"x": "y"}'), SSEEvent(None, "[DONE]")]
