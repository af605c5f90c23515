"""Account passwords: length rules, bcrypt, and a timing-safe miss.

bcrypt reads at most 72 bytes and rejects longer input, so a password is first reduced to a
fixed 44-byte base64 SHA-256: every character of a long passphrase counts, and bcrypt never
sees a NUL or a truncation. An unknown email is checked against a decoy hash, so "no such
account" costs the same time as "wrong password"."""

from __future__ import annotations

import base64
import functools
import hashlib

import bcrypt

MIN_LENGTH = 10
MAX_LENGTH = 256  # characters; long enough for any passphrase, short enough to hash cheaply


class PasswordError(ValueError):
    """A password that breaks the rules (the message says which)."""


def check_rules(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"a password has at most {MAX_LENGTH} characters")


def _prehash(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(password.encode()).digest())


def hash_password(password: str, rounds: int) -> str:
    check_rules(password)
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, hashed: str | None, rounds: int) -> bool:
    """True when ``password`` matches ``hashed``; with no hash (unknown account) the same
    bcrypt work is done against a decoy and the answer is False."""
    candidate = _prehash(password[:MAX_LENGTH + 1])
    if not hashed:
        bcrypt.checkpw(candidate, _decoy(rounds))
        return False
    return bcrypt.checkpw(candidate, hashed.encode())


@functools.lru_cache(maxsize=4)
def _decoy(rounds: int) -> bytes:
    return bcrypt.hashpw(b"decoy", bcrypt.gensalt(rounds))
