"""Scrub secrets from every log record before any handler formats or ships it.

Installed as the log-record factory in every NeuroAPI process, so it covers our loggers, Ray's
and third-party ones alike: a full API key keeps only its public prefix, and bearer tokens,
provider keys and Authorization / x-api-key header values are replaced."""

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


def install() -> None:
    """Idempotent: wrap the current record factory once per process."""
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
