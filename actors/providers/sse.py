"""Server-sent events, the wire format of every streamed answer (ours and the providers')."""

from __future__ import annotations

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


class SSEDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole events back.

    Follows the WHATWG rules the providers rely on: lines end in LF, CRLF or CR; a blank line
    ends an event; ``data`` lines join with LF; comment lines (``:``) are keep-alives."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        data, held = self._buffer + chunk, b""
        if data.endswith(b"\r"):  # maybe the first half of a CRLF: wait for the next byte
            data, held = data[:-1], b"\r"
        events: list[SSEEvent] = []
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop() + held  # the unfinished line
        for raw in lines:
            line = raw.decode("utf-8")
            if not line:
                if self._data or self._event:
                    events.append(SSEEvent(self._event, "\n".join(self._data)))
                self._event, self._data = None, []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._event = value
        return events
