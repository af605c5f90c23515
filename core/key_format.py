"""The API-key format: ``neuro_<prefix>_<secret>``.

The prefix (8 lowercase alphanumerics) is the public id: it goes in logs, records and lists.
The secret is 32 random base62 characters followed by a 6-character base62 CRC32 of everything
before it, so a leaked key (in a paste, a repo, a log) can be recognised offline and a typo is
rejected without touching storage. The checksum is not a secret and proves nothing about
validity; only the stored HMAC does."""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

KEY_PREFIX_TAG = "neuro_"
SESSION_TOKEN_TAG = "nsess_"  # a log-in session's bearer token (``actors.accounts.sessions``)
_PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_CHARS = 32
_CHECKSUM_CHARS = 6
KEY_PATTERN = re.compile(r"neuro_([a-z0-9]{8})_([0-9A-Za-z]{38})")
PREFIX_PATTERN = re.compile(r"neuro_[a-z0-9]{8}")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    prefix: str  # "neuro_xxxxxxxx"
    secret: str

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"ParsedKey(prefix={self.prefix!r}, secret=<hidden>)"


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECKSUM_CHARS)


def generate_key() -> tuple[str, ParsedKey]:
    """A new key as (plaintext, parsed). The plaintext is shown once and never stored."""
    prefix = KEY_PREFIX_TAG + "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
    random_part = "".join(secrets.choice(_BASE62) for _ in range(_RANDOM_CHARS))
    body = f"{prefix}_{random_part}"
    secret = random_part + _checksum(body)
    return f"{prefix}_{secret}", ParsedKey(prefix, secret)


def parse_key(presented: str) -> ParsedKey | None:
    """The key's parts if it is well formed with a valid checksum, else None."""
    match = KEY_PATTERN.fullmatch(presented)
    if match is None:
        return None
    prefix = KEY_PREFIX_TAG + match.group(1)
    secret = match.group(2)
    expected = _checksum(f"{prefix}_{secret[:_RANDOM_CHARS]}")
    if not secrets.compare_digest(secret[_RANDOM_CHARS:], expected):
        return None
    return ParsedKey(prefix, secret)


def looks_like_leaked_key(text: str) -> list[str]:
    """Prefixes of every checksum-valid key in ``text`` (for scanning pastes and logs)."""
    found = []
    for match in KEY_PATTERN.finditer(text):
        parsed = parse_key(match.group(0))
        if parsed is not None:
            found.append(parsed.prefix)
    return found
