import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.sse import DONE, SSEDecoder, SSEEvent, SSELineTooLong, encode

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


def test_a_line_over_the_bound_fails_without_buffering_the_rest():
    decoder, fed = SSEDecoder(max_line_bytes=1 << 20), 0
    with pytest.raises(SSELineTooLong):
        for _ in range(30 * 16):  # a 30 MB line in 64 KiB reads
            decoder.feed(b"x" * 65536)
            fed += 65536
    assert fed <= (1 << 20)  # it stopped at the bound, not after 30 MB


def test_lines_up_to_the_bound_still_decode_in_any_split():
    decoder = SSEDecoder(max_line_bytes=100)
    line = b"data: " + b"y" * 94
    assert decoder.feed(line[:50]) == [] and decoder.feed(line[50:] + b"\r") == []
    assert decoder.feed(b"\n\n") == [SSEEvent(None, "y" * 94)]


def test_a_long_line_in_many_small_reads_is_copied_once():
    # Linear work: the unfinished line is kept as pieces and joined once when it ends (the
    # old decoder rebuilt its buffer on every read: a 30 MB line took 18 s).
    decoder, line = SSEDecoder(max_line_bytes=8 << 20), b"data: " + b"z" * (4 << 20)
    events = []
    for start in range(0, len(line), 1024):
        events += decoder.feed(line[start:start + 1024])
    events += decoder.feed(b"\n\n")
    assert events == [SSEEvent(None, "z" * (4 << 20))]
    assert decoder.copied <= len(line) + 2
