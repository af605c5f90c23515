"""Logging for every NeuroAPI process: secrets scrubbed, our lines in the replica's log.

``install()`` wraps the log-record factory, so every record (ours, Ray's, third-party ones)
is scrubbed before any handler formats or ships it: a full API key keeps only its public
prefix; bearer tokens, provider keys and Authorization / x-api-key values are replaced.
Inside a Serve replica it also sends the ``neuroapi`` loggers to Serve's replica log file."""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    (re.compile(r"(neuro_[a-z0-9]{8})_[0-9A-Za-z]{8,}"), r"\1_[REDACTED]"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[REDACTED]"),
    (re.compile(r"(?i)((?:authorization|x-api-key|api[-_]key)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
     r"\1[REDACTED]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-[REDACTED]"),
]


def scrub(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def install(in_replica: bool = False) -> None:
    """Idempotent: wrap the current record factory once per process."""
    if in_replica:
        ours, serves = logging.getLogger("neuroapi"), logging.getLogger("ray.serve")
        ours.handlers, ours.propagate = list(serves.handlers), False
        ours.setLevel(logging.INFO)
    current = logging.getLogRecordFactory()
    if getattr(current, "neuroapi_scrubbing", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = current(*args, **kwargs)
        if record.args or isinstance(record.msg, str):
            record.msg, record.args = scrub(record.getMessage()), None
        return record

    factory.neuroapi_scrubbing = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
