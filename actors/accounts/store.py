"""Accounts in Redis: one hash per account, an index from email to id, a set of key prefixes,
and monthly usage counters (written by metering).

The email index is keyed by a SHA-256 of the normalised address, so key names in Redis carry
no personal data. The password is kept only as a bcrypt hash (``actors.accounts.passwords``)."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass

import redis.asyncio as aioredis

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}")


class AccountError(ValueError):
    """A bad email, a duplicate account, an unknown account."""


class AccountExists(AccountError):
    """Sign-up with an email that already has an account."""


def account_key(account_id: str) -> str:
    return f"neuroapi:account:{account_id}"


def account_prefixes_key(account_id: str) -> str:
    return f"neuroapi:account:{account_id}:keys"


def account_usage_key(account_id: str, month: str) -> str:
    """Monthly counters (``month`` is YYYY-MM): requests, cost_units, tokens, bytes."""
    return f"neuroapi:account:{account_id}:usage:{month}"


def email_index_key(email: str) -> str:
    return "neuroapi:account-by-email:" + hashlib.sha256(email.encode()).hexdigest()


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    # Control and format characters (NUL, escapes, bidi overrides, ...) have no place in an
    # address and could forge log lines or spoof what an operator reads.
    if not _EMAIL.fullmatch(email) or any(unicodedata.category(c).startswith("C") for c in email):
        raise AccountError("not a valid email address")
    return email


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    status: str
    created_at: int


class AccountStore:
    def __init__(self, redis: aioredis.Redis):
        self._redis = redis

    async def create(self, email: str, password_hash: str = "") -> Account:
        """A new account; without a password hash it can use keys but not log in."""
        email = normalise_email(email)
        account = Account("acct_" + secrets.token_hex(8), email, "active", int(time.time()))
        if not await self._redis.set(email_index_key(email), account.id, nx=True):
            raise AccountExists("an account with this email already exists")
        await self._redis.hset(
            account_key(account.id),
            mapping={
                "email": account.email,
                "status": account.status,
                "created_at": account.created_at,
                "stripe_customer_id": "",
                "stripe_subscription_id": "",
                "password_hash": password_hash,
            },
        )
        return account

    async def get(self, account_id: str) -> Account | None:
        fields = await self._redis.hgetall(account_key(account_id))
        if not fields:
            return None
        return Account(account_id, fields["email"], fields["status"], int(fields["created_at"]))

    async def password_hash(self, account_id: str) -> str:
        return await self._redis.hget(account_key(account_id), "password_hash") or ""

    async def by_email(self, email: str) -> Account | None:
        account_id = await self._redis.get(email_index_key(normalise_email(email)))
        return await self.get(account_id) if account_id else None

    async def require(self, email: str) -> Account:
        account = await self.by_email(email)
        if account is None:
            raise AccountError("no account with this email")
        return account

    async def id_of(self, email: str) -> str:
        """The account id of ``email`` (``finetunes.service.OwnerLookup``)."""
        return (await self.require(email)).id
