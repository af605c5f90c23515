"""Server-sent events, the wire format of every streamed answer (ours and the providers')."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str | None
    data: str


def encode(data: str | bytes) -> bytes:
    """One ``data:`` event. JSON text has no raw newlines, so one data line is enough."""
    payload = data.encode() if isinstance(data, str) else data
    return b"data: " + payload + b"\n\n"


DONE = encode("[DONE]")


def encode_named(event: str, data: str | bytes) -> bytes:
    """One event with its type on an ``event:`` line, as Anthropic's streams carry it."""
    payload = data.encode() if isinstance(data, str) else data
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


# The longest line an upstream may send (a JSON chunk of one token is well under 1 KiB; a
# provider's whole answer in one event stays far below this). Longer: the answer is unreadable.
MAX_LINE_BYTES = 1 << 20

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSELineTooLong(ValueError):
    """An upstream line over the decoder's bound: the stream is failed, not buffered further."""


class SSEDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole events back.

    Follows the WHATWG rules the providers rely on: lines end in LF, CRLF or CR; a blank line
    ends an event; ``data`` lines join with LF; comment lines (``:``) are keep-alives.

    Linear in the bytes fed: each read is scanned once, and an unfinished line is kept as a
    list of pieces joined once when it ends (never rebuilt per read). A line over
    ``max_line_bytes`` raises ``SSELineTooLong``. ``copied`` counts the bytes joined into
    lines, so a test can check the work stays linear."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max_line = max_line_bytes
        self._pending: list[bytes] = []  # the unfinished line, as received
        self._pending_len = 0
        self._after_cr = False  # the last read ended in CR: an LF starting the next one is its pair
        self._event: str | None = None
        self._data: list[str] = []
        self.copied = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = False
        events: list[SSEEvent] = []
        start = 0
        for end in _LINE_END.finditer(chunk):
            self._check(end.start() - start)
            if self._pending:
                self._pending.append(chunk[start:end.start()])
                raw = b"".join(self._pending)
                self._pending, self._pending_len = [], 0
            else:
                raw = chunk[start:end.start()]
            self.copied += len(raw)
            self._line(raw, events)
            start = end.end()
            if end.group() == b"\r" and start == len(chunk):
                self._after_cr = True
        if start < len(chunk):
            self._check(len(chunk) - start)
            self._pending.append(chunk[start:])
            self._pending_len += len(chunk) - start
        return events

    def _check(self, more: int) -> None:
        if self._pending_len + more > self._max_line:
            raise SSELineTooLong(f"an SSE line is longer than {self._max_line} bytes")

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        line = raw.decode("utf-8")
        if not line:
            if self._data or self._event:
                events.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event, self._data = None, []
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
