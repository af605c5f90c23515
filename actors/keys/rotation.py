"""Secret rotation with the gateway up: move every key record to the newest pepper or envelope
key (``neuroapi secrets rotate-pepper`` / ``rotate-envelope``).

The order is what makes it safe: (1) the new version exists in the key material's source (a
secrets file gets it here; an environment must have it everywhere already); (2) every replica
that holds key material reloads it and acknowledges (``actors.keys.material``), and one that
cannot find the new version does not, which stops the rotation before any record moves; (3)
records move one by one. Until a record moves it keeps verifying under its old version, since
replicas accept any version they hold; after, under the new one. (4) Then every account moves
too (``AccountStore.reseal``, ``BillingStore.reseal``): its email and Stripe ids sealed under
the newest envelope key and its email and customer indexes named under the newest pepper,
whichever kind rotated, and a record from before sealing is sealed and re-indexed here; so are
the Stripe ids a purged account's billing record keeps (``BillingStore.reseal_retained``). Until
an account moves, lookups still find it under its older index names and open it under its
older envelope key.

Each record moves with one compare-and-set (a Lua script): it writes the new digest (or
ciphertext) and its version together, only if the old ones are still there, and never touches
``status``, so a concurrent revoke or another rotation is never overwritten. Records already at
the target (or newer) are skipped, so a rotation can be re-run or resumed at any time. The
plaintext key exists only in this process's memory while its record is re-hashed; nothing here
logs, prints or raises with key material."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from actors.accounts.sealing import AccountSealer
from actors.accounts.store import AccountStore, Resealed, account_key
from actors.billing.store import BillingStore, billing_key
from actors.keys.crypto import InvalidToken, KeyCrypto
from actors.keys.material import SECRETS_TOPIC, reload_subject
from actors.keys.store import key_record_key
from config.secrets import ENVIRONMENT_SOURCE, add_key_version, load_key_material
from config.settings import Settings
from core.invalidation import InvalidationTimeout, broadcast
from core.key_format import PREFIX_PATTERN, parse_key

RECORD_PATTERN = key_record_key("*")
ACCOUNT_PATTERN = account_key("*")
_ACCOUNT_RECORD = re.compile(re.escape(account_key("")) + r"[^:]+")  # not its :keys, :usage:... keys
BILLING_PATTERN = billing_key("*")
_BILLING_RECORD = re.compile(re.escape(billing_key("")) + r"[^:]+")  # not usage_report:..., reporter:...
# What one record's resealing counts as, when its email and its Stripe ids each did something.
_WORST = (Resealed.UNREADABLE, Resealed.CONFLICT, Resealed.MOVED, Resealed.CURRENT)
READ_FIELDS = ("digest", "pepper_version", "ciphertext", "envelope_version")
# kind -> (the field that changes, the field that holds its version)
FIELDS = {"pepper": ("digest", "pepper_version"), "envelope": ("ciphertext", "envelope_version")}
BATCH = 200
# Passes until one moves nothing: a later pass picks up records written with older material
# while an earlier one scanned (a `keys create` that loaded its material just before).
MAX_PASSES = 5

# KEYS[1] a key record; ARGV: n, then n (field, expected value) pairs, then (field, value) pairs.
_COMPARE_AND_SET = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  if redis.call('HGET', KEYS[1], ARGV[2 + 2 * i]) ~= ARGV[3 + 2 * i] then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2 + 2 * n))
return 1
"""


class ReplicasNotReady(InvalidationTimeout):
    """Some replica did not confirm it holds the new version; no record was changed."""


@dataclass(frozen=True)
class Migration:
    migrated: int  # records moved to the target version
    skipped: int  # already at the target version (or newer) when first seen
    left: int  # still below it: unreadable under the known keys, or changed under us each pass


@dataclass(frozen=True)
class RotationReport:
    kind: str
    version: int  # the target: the newest version of that kind
    added_to: str | None  # the secrets file that gained it, or None (environment, --resume)
    replicas: int  # replicas that confirmed they reloaded
    migration: Migration  # key records
    accounts: Migration = Migration(0, 0, 0)  # account records (sealed email, email index)

    @property
    def left(self) -> int:
        return self.migration.left + self.accounts.left

    def summary(self) -> str:
        where = f"added to {self.added_to}" if self.added_to else "already in the key material"
        m = self.migration
        return (f"rotate-{self.kind}: {self.kind} v{self.version} is current ({where}); "
                f"{self.replicas} replica(s) confirmed; {m.migrated} record(s) migrated, "
                f"{m.skipped} skipped, {m.left} left on older versions; {self.accounts.migrated} account(s) "
                f"resealed, {self.accounts.skipped} current, {self.accounts.left} left")


def _version(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _plaintext(crypto: KeyCrypto, prefix: str, record: Mapping[str, str]) -> str | None:
    """The record's key if its ciphertext opens to the key this very record verifies; a
    ciphertext that does not match its digest (damaged, or swapped in) is never re-hashed."""
    try:
        plaintext = crypto.open(record["ciphertext"])
    except InvalidToken:
        return None
    parsed = parse_key(plaintext)
    pepper_version = _version(record["pepper_version"])
    if parsed is None or parsed.prefix != prefix or pepper_version is None:
        return None
    if not crypto.matches(parsed.secret, record["digest"], pepper_version):
        return None
    return plaintext


def _new_fields(kind: str, crypto: KeyCrypto, plaintext: str) -> dict[str, str]:
    if kind == "pepper":
        secret = parse_key(plaintext).secret
        return {"digest": crypto.digest(secret), "pepper_version": str(crypto.pepper_version)}
    ciphertext, version = crypto.encrypt(plaintext)
    return {"ciphertext": ciphertext, "envelope_version": str(version)}


async def _record_batches(redis: aioredis.Redis) -> AsyncIterator[list[str]]:
    batch: list[str] = []
    async for key in redis.scan_iter(match=RECORD_PATTERN, count=BATCH):
        if PREFIX_PATTERN.fullmatch(key.removeprefix(key_record_key(""))):
            batch.append(key)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class _Pass:
    migrated: int = 0
    skipped: int = 0
    unreadable: int = 0
    conflicts: int = 0


async def _one_pass(redis: aioredis.Redis, crypto: KeyCrypto, kind: str) -> _Pass:
    field, version_field = FIELDS[kind]
    target = crypto.pepper_version if kind == "pepper" else crypto.envelope_version
    compare_and_set = redis.register_script(_COMPARE_AND_SET)
    counts = _Pass()
    async for batch in _record_batches(redis):
        async with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.hmget(key, *READ_FIELDS)
            rows = await pipe.execute()
        writes = []
        for key, row in zip(batch, rows, strict=True):
            record = dict(zip(READ_FIELDS, row, strict=True))
            if None in row:
                continue  # being created (or a leftover of a failed create): no key material in it
            version = _version(record[version_field])
            if version is not None and version >= target:
                counts.skipped += 1
                continue
            plaintext = _plaintext(crypto, key.removeprefix(key_record_key("")), record)
            if plaintext is None:
                counts.unreadable += 1
                continue
            new = _new_fields(kind, crypto, plaintext)
            expected = [field, record[field], version_field, record[version_field]]
            writes.append((key, [2, *expected, *(item for pair in new.items() for item in pair)]))
        if not writes:
            continue
        async with redis.pipeline(transaction=False) as pipe:
            for key, args in writes:
                await compare_and_set(keys=[key], args=args, client=pipe)
            results = await pipe.execute()
        moved = sum(int(r) for r in results)
        counts.migrated += moved
        counts.conflicts += len(results) - moved  # changed since read: the next pass looks again
    return counts


async def migrate(redis: aioredis.Redis, crypto: KeyCrypto, kind: str) -> Migration:
    """Move every key record below ``crypto``'s newest ``kind`` ("pepper" or "envelope") to it.
    ``redis`` must decode responses. Safe to run again, and alongside creates and revokes."""
    if kind not in FIELDS:
        raise ValueError(f"unknown kind of key material: {kind!r}")
    migrated, skipped = 0, None
    for _ in range(MAX_PASSES):
        counts = await _one_pass(redis, crypto, kind)
        migrated += counts.migrated
        skipped = counts.skipped if skipped is None else skipped
        if counts.migrated == 0 and counts.conflicts == 0:
            break
    return Migration(migrated, skipped or 0, counts.unreadable + counts.conflicts)


async def migrate_accounts(redis: aioredis.Redis, sealer: AccountSealer) -> Migration:
    """Move every account (its email and Stripe ids), and the Stripe ids a purged account's
    billing record keeps, to ``sealer``'s newest envelope key and pepper. Safe to run again,
    and alongside sign-ups, log-ins and webhooks (which move a record they touch) and deletions."""
    store, billing = AccountStore(redis, sealer), BillingStore(redis, sealer)
    migrated, skipped = 0, None
    for _ in range(MAX_PASSES):
        counts = dict.fromkeys(Resealed, 0)
        async for key in redis.scan_iter(match=ACCOUNT_PATTERN, count=BATCH):
            if _ACCOUNT_RECORD.fullmatch(key):
                account_id = key.removeprefix(account_key(""))
                done = {await store.reseal(account_id), await billing.reseal(account_id)}
                counts[next(r for r in _WORST if r in done)] += 1
        async for key in redis.scan_iter(match=BILLING_PATTERN, count=BATCH):
            account_id = key.removeprefix(billing_key(""))
            if _BILLING_RECORD.fullmatch(key) and not await redis.exists(account_key(account_id)):
                counts[await billing.reseal_retained(account_id)] += 1  # a purged account's
        migrated += counts[Resealed.MOVED]
        skipped = counts[Resealed.CURRENT] if skipped is None else skipped
        if counts[Resealed.MOVED] == 0 and counts[Resealed.CONFLICT] == 0:
            break
    return Migration(migrated, skipped or 0, counts[Resealed.UNREADABLE] + counts[Resealed.CONFLICT])


async def rotate(
    redis: aioredis.Redis,
    settings: Settings,
    kind: str,
    *,
    add_version: bool = True,
    environ: Mapping[str, str] | None = None,
    reload_timeout_s: float = 10.0,
) -> RotationReport:
    """A whole rotation: a new version in the secrets file (unless the material comes from the
    environment, or ``add_version`` is False to finish an earlier run), every replica reloaded,
    then every record migrated."""
    if kind not in FIELDS:
        raise ValueError(f"unknown kind of key material: {kind!r}")
    material, _ = load_key_material(settings, environ=environ)
    from_file = material.source != ENVIRONMENT_SOURCE
    added_to = None
    if from_file and add_version:
        add_key_version(Path(material.source), kind)
        material, _ = load_key_material(settings, environ=environ)
        added_to = material.source
    crypto = KeyCrypto(material)
    version = crypto.pepper_version if kind == "pepper" else crypto.envelope_version
    try:
        replicas = await broadcast(redis, SECRETS_TOPIC, reload_subject(kind, version), reload_timeout_s)
    except InvalidationTimeout as error:
        then = (f"then run `neuroapi secrets rotate-{kind} --resume`" if from_file
                else "then run this again")
        raise ReplicasNotReady(
            f"{error}: not every replica holds {kind} v{version}, so no record was changed; "
            f"give every replica the new version ({material.source}), {then}"
        ) from None
    migration = await migrate(redis, crypto, kind)
    return RotationReport(kind, version, added_to, replicas, migration,
                          await migrate_accounts(redis, AccountSealer(material)))
