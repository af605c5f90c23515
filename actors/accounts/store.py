"""Accounts in Redis: one hash per account, a keyed index from email to id, a set of key
prefixes, and monthly usage counters (written by metering).

The email is kept only sealed and the index is keyed by an HMAC under the pepper
(``actors.accounts.sealing``), so neither a key name nor a value in Redis carries the address.
Reading or finding an account by its email therefore needs key material: ``AccountStore``
takes an ``AccountSealer``, and only the key-verifier pool and the CLI build one. What needs
no email (status, password hash, the key names below) needs no key material. The password is
kept only as a bcrypt hash (``actors.accounts.passwords``)."""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from enum import Enum

import redis.asyncio as aioredis

from actors.accounts.sealing import (AccountSealer, SealError, index_version, legacy_email_index_key,
                                     sealed_version)

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}")

# Account hash fields that hold the email: sealed (``sealing``), the index key's name, and the
# plaintext of a record written before sealing (read, then moved by ``reseal``).
EMAIL_SEALED, EMAIL_INDEX, LEGACY_EMAIL = "email_sealed", "email_index", "email"
# The account's monthly budget across all its keys, micro cost_units as decimal text (issue 19;
# operators set it: actors.keys.limit_settings). Absent: no account budget.
ACCOUNT_BUDGET_FIELD = "monthly_budget_micro"


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


def email_index_of(fields: dict[str, str]) -> str | None:
    """The name of the account's email index, from its hash alone (no key material): the purge
    deletes it by this. A record from before sealing names it by its plaintext email."""
    if fields.get(EMAIL_INDEX):
        return fields[EMAIL_INDEX]
    if fields.get(LEGACY_EMAIL):
        return legacy_email_index_key(fields[LEGACY_EMAIL])
    return None


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

    def __repr__(self) -> str:  # the address stays out of logs and error reports
        return f"Account(id={self.id!r}, status={self.status!r}, created_at={self.created_at})"


class Resealed(Enum):
    """What ``reseal`` did to one account record."""

    MOVED = "moved"  # sealed and indexed under the current versions now
    CURRENT = "current"  # already was
    UNREADABLE = "unreadable"  # sealed under an envelope key this process lacks
    CONFLICT = "conflict"  # changed while it was read, or its new index name is another's


# Create only if no name of the email's index exists (any pepper version, or pre-sealing).
_CREATE = """
-- KEYS[1] account hash, KEYS[2] current index, KEYS[3..] older index names
-- ARGV[1] account id, then field/value pairs of the account hash
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# Move one record to the current seal and index, only if its email fields are as read.
_RESEAL = """
-- KEYS[1] account hash, KEYS[2] index now, KEYS[3] index wanted
-- ARGV[1] email_sealed as read ('' = none), ARGV[2] legacy email as read ('' = none),
-- ARGV[3] new email_sealed, ARGV[4] account id
if (redis.call('HGET', KEYS[1], 'email_sealed') or '') ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[1], 'email') or '') ~= ARGV[2] then return 0 end
if KEYS[2] ~= KEYS[3] then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= ARGV[4] then return -1 end
  if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
  redis.call('SET', KEYS[3], ARGV[4])
end
redis.call('HSET', KEYS[1], 'email_sealed', ARGV[3], 'email_index', KEYS[3])
redis.call('HDEL', KEYS[1], 'email')
return 1
"""


class AccountStore:
    def __init__(self, redis: aioredis.Redis, sealer: AccountSealer):
        self._redis = redis
        self._sealer = sealer
        self._create = redis.register_script(_CREATE)
        self._reseal = redis.register_script(_RESEAL)

    async def create(self, email: str, password_hash: str = "") -> Account:
        """A new account; without a password hash it can use keys but not log in."""
        email = normalise_email(email)
        account = Account("acct_" + secrets.token_hex(8), email, "active", int(time.time()))
        index, *older = self._sealer.email_index_candidates(email)
        fields = {
            EMAIL_SEALED: self._sealer.seal(email),
            EMAIL_INDEX: index,
            "status": account.status,
            "created_at": account.created_at,
            "password_hash": password_hash,
        }
        args = [account.id, *(item for pair in fields.items() for item in pair)]
        if not await self._create(keys=[account_key(account.id), index, *older], args=args):
            raise AccountExists("an account with this email already exists")
        return account

    async def get(self, account_id: str) -> Account | None:
        """The account with its email opened (and, if it was sealed or indexed under older
        versions, moved to the current ones: the next touch)."""
        fields = await self._redis.hgetall(account_key(account_id))
        if not fields:
            return None
        email = self._open(fields)
        if email is None:
            raise AccountError("this account's email cannot be read with the key material held")
        await self._reseal_fields(account_id, fields, email)
        return Account(account_id, email, fields["status"], int(fields["created_at"]))

    async def status(self, account_id: str) -> str | None:
        return await self._redis.hget(account_key(account_id), "status")

    async def password_hash(self, account_id: str) -> str:
        return await self._redis.hget(account_key(account_id), "password_hash") or ""

    async def by_email(self, email: str) -> Account | None:
        names = self._sealer.email_index_candidates(normalise_email(email))
        found = next((account_id for account_id in await self._redis.mget(names) if account_id), None)
        return await self.get(found) if found else None

    async def require(self, email: str) -> Account:
        account = await self.by_email(email)
        if account is None:
            raise AccountError("no account with this email")
        return account

    async def id_of(self, email: str) -> str:
        """The account id of ``email`` (``finetunes.service.OwnerLookup``)."""
        return (await self.require(email)).id

    async def email_of(self, account_id: str) -> str:
        account = await self.get(account_id)
        if account is None:
            raise AccountError("no such account")
        return account.email

    async def reseal(self, account_id: str) -> Resealed:
        """Move one record to the current envelope key and pepper (a rotation's migration)."""
        fields = await self._redis.hgetall(account_key(account_id))
        if not fields.get(EMAIL_SEALED) and not fields.get(LEGACY_EMAIL):
            return Resealed.CURRENT  # gone, or holds no email: nothing to seal
        email = self._open(fields)
        if email is None:
            return Resealed.UNREADABLE
        return await self._reseal_fields(account_id, fields, email)

    def _open(self, fields: dict[str, str]) -> str | None:
        if fields.get(EMAIL_SEALED):
            try:
                return self._sealer.open(fields[EMAIL_SEALED])
            except SealError:
                return None
        return fields.get(LEGACY_EMAIL) or None

    async def _reseal_fields(self, account_id: str, fields: dict[str, str], email: str) -> Resealed:
        sealed, index = fields.get(EMAIL_SEALED, ""), email_index_of(fields) or ""
        # Only ever forward: a process whose material is behind a record's leaves it alone.
        seal_behind = bool(fields.get(LEGACY_EMAIL)) or (sealed_version(sealed) or 0) < self._sealer.envelope_version
        index_behind = (index_version(index) or 0) < self._sealer.pepper_version
        if not seal_behind and not index_behind:
            return Resealed.CURRENT
        new_sealed = self._sealer.seal(email) if seal_behind else sealed
        wanted = self._sealer.email_index_key(email) if index_behind else index
        done = await self._reseal(keys=[account_key(account_id), index or wanted, wanted],
                                  args=[sealed, fields.get(LEGACY_EMAIL, ""), new_sealed, account_id])
        return Resealed.MOVED if done == 1 else Resealed.CONFLICT
