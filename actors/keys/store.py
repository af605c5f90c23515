"""API-key records in Redis: create, list, verify, revoke.

A record (``neuroapi:key:<prefix>``) holds the account, a name, the peppered HMAC of the secret
with its pepper version, and the Fernet ciphertext with its envelope version; never the
plaintext. Revoking writes the record first and then waits for every replica that caches
verified keys to drop it (``core.invalidation``), so no replica accepts it afterwards."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from actors.accounts.store import ACCOUNT_BUDGET_FIELD, account_key, account_prefixes_key
from actors.keys.crypto import KeyCrypto
from actors.keys.limit_records import CEILING_FIELD, NO_LIMITS, OWN_FIELD, decode, decode_budget, effective
from core.invalidation import broadcast
from core.limits import Limits
from core.key_format import PREFIX_PATTERN, generate_key, parse_key
from core.scope import EXCLUDED_FIELD, IN_HOUSE_FIELD, UNRESTRICTED, Scope

KEYS_TOPIC = "key"


def key_record_key(prefix: str) -> str:
    return f"neuroapi:key:{prefix}"


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    """What a successful check yields: enough to route and meter, nothing secret."""

    prefix: str
    account_id: str
    scope: Scope = UNRESTRICTED  # the account's, read with the key: routing needs no extra lookup
    # What every call of the key is held to (actors.keys.limit_records.effective), read in the
    # same round trips: the key's rates, budget and allow-list and its account's budget.
    limits: Limits = NO_LIMITS


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    name: str
    status: str
    created_at: int
    last_used_at: int | None = None  # to the minute or so: the ingress reports uses in batches
    limits: Limits = NO_LIMITS  # what its calls are held to (owner's and operator's, the tighter)
    ceiling: Limits = NO_LIMITS  # the operator's: the owner may not go above it


# Sets last_used_at only on a record that exists and only forwards in time.
_RECORD_USE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local previous = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0')
if tonumber(ARGV[1]) > previous then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1]) end
return 1
"""


class KeyStore:
    def __init__(self, redis: aioredis.Redis, crypto: KeyCrypto):
        self._redis = redis
        self._crypto = crypto
        self._record_use = redis.register_script(_RECORD_USE)

    async def create(self, account_id: str, name: str = "") -> tuple[str, KeyInfo]:
        """A new key for the account: (the plaintext, shown once; its public info)."""
        if not await self._redis.exists(account_key(account_id)):
            raise LookupError("no such account")
        while True:
            plaintext, parsed = generate_key()
            sealed = self._crypto.seal(plaintext, parsed.secret)
            info = KeyInfo(parsed.prefix, name, "active", int(time.time()))
            created = await self._redis.hsetnx(key_record_key(parsed.prefix), "account_id", account_id)
            if created:  # a prefix collision (1 in 36^8 per pair) just draws again
                break
        await self._redis.hset(key_record_key(parsed.prefix), mapping={
            "name": name,
            "status": info.status,
            "created_at": info.created_at,
            "digest": sealed.digest,
            "pepper_version": sealed.pepper_version,
            "ciphertext": sealed.ciphertext,
            "envelope_version": sealed.envelope_version,
        })
        await self._redis.sadd(account_prefixes_key(account_id), parsed.prefix)
        return plaintext, info

    async def list(self, account_id: str) -> list[KeyInfo]:
        prefixes = sorted(await self._redis.smembers(account_prefixes_key(account_id)))
        infos = []
        account_budget = decode_budget(await self._redis.hget(account_key(account_id), ACCOUNT_BUDGET_FIELD))
        for prefix in prefixes:
            name, status, created_at, last_used_at, own, ceiling = await self._redis.hmget(
                key_record_key(prefix), "name", "status", "created_at", "last_used_at", OWN_FIELD, CEILING_FIELD)
            if status is not None:
                ceiling_limits = decode(ceiling)
                infos.append(KeyInfo(prefix, name or "", status, int(created_at),
                                     int(last_used_at) if last_used_at else None,
                                     effective(decode(own), ceiling_limits, account_budget), ceiling_limits))
        return infos

    async def owner(self, prefix: str) -> str | None:
        if not PREFIX_PATTERN.fullmatch(prefix):
            return None
        return await self._redis.hget(key_record_key(prefix), "account_id")

    async def record_uses(self, last_used: dict[str, int]) -> None:
        """``{prefix: unix time}`` from the ingress replicas' batches."""
        for prefix, at in last_used.items():
            if PREFIX_PATTERN.fullmatch(prefix):
                await self._record_use(keys=[key_record_key(prefix)], args=[int(at)])

    async def verify(self, presented: str) -> VerifiedKey | None:
        parsed = parse_key(presented)
        if parsed is None:
            return None
        fields = await self._redis.hmget(
            key_record_key(parsed.prefix), "account_id", "status", "digest", "pepper_version",
            OWN_FIELD, CEILING_FIELD,
        )
        account_id, status, digest, pepper_version, own, ceiling = fields
        if digest is None:
            self._crypto.burn_time(parsed.secret)
            return None
        if not self._crypto.matches(parsed.secret, digest, int(pepper_version)):
            return None
        if status != "active":
            return None
        account_status, in_house_only, excluded, account_budget = await self._redis.hmget(
            account_key(account_id), "status", IN_HOUSE_FIELD, EXCLUDED_FIELD, ACCOUNT_BUDGET_FIELD)
        if account_status != "active":
            return None
        return VerifiedKey(parsed.prefix, account_id, Scope.from_fields(in_house_only, excluded),
                           effective(decode(own), decode(ceiling), decode_budget(account_budget)))

    async def revoke(self, prefix: str) -> int:
        """Revoke; returns how many caching replicas confirmed before this returned."""
        if not PREFIX_PATTERN.fullmatch(prefix):
            raise LookupError("not a key prefix (neuro_ and 8 characters)")
        record = key_record_key(prefix)
        if not await self._redis.exists(record):
            raise LookupError("no key with this prefix")
        await self._redis.hset(record, mapping={"status": "revoked", "revoked_at": int(time.time())})
        return await broadcast(self._redis, KEYS_TOPIC, prefix)
