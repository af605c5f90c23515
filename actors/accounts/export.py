"""Everything we hold about one account, as one JSON-able document (the data-access request).

``export_account`` reads; it writes nothing. What it reads is ``KEYS_OF_ACCOUNT`` (the keys that
are the account's) and ``SHARED_OF_ACCOUNT`` (shared keys holding entries about it):
tests/unit/test_account_export.py walks the whole keyspace and fails on any key or stream entry
naming the account that is neither, or whose content the document lacks.

Never in the document: the password hash, a key's HMAC digest and ciphertext (and their
pepper/envelope versions), nor any hash or record field whose name says it is a secret. Session
ids appear as their first ``SESSION_ID_SHOWN`` characters only: enough to tell sessions apart.

Cost: sessions, Stripe event marks and usage months are found by SCAN, calls and audit entries
by reading both streams whole. An export is rare (a request from the customer or an operator),
so it trades speed for needing no index beyond those that exist."""

from __future__ import annotations

import re
import time
from typing import Any

import redis.asyncio as aioredis

from actors.accounts.sessions import session_key
from actors.accounts.sealing import AccountSealer
from actors.accounts.store import (EMAIL_INDEX, EMAIL_SEALED, LEGACY_EMAIL, AccountStore, account_key,
                                   account_prefixes_key, account_usage_key)
from actors.billing.reporter import cursor_key, ledger_key
from actors.billing.store import ID_FIELDS, BillingStore, event_key
from actors.keys.store import key_record_key
from actors.metering.usage_store import CALLS_STREAM, UsageStore
from core.audit import AUDIT_STREAM
from core.scope import EXCLUDED_FIELD, IN_HOUSE_FIELD, Scope
from finetunes.registry import FineTuneRegistry

# Key name templates of what is the account's, and the export section that holds each one's data.
KEYS_OF_ACCOUNT: dict[str, str] = {
    "neuroapi:account:{account}": "account",  # + "scope" and "billing" (stripe ids) fields
    "neuroapi:account-by-email:v{pepper_version}:{email_hmac}": "account",  # keyed (actors.accounts.sealing)
    "neuroapi:account-by-email:{email_sha256}": "account",  # a record from before sealing, until moved
    "neuroapi:account:{account}:keys": "keys",
    "neuroapi:key:{prefix}": "keys",
    "neuroapi:account:{account}:sessions": "sessions",  # the per-account index (set or zset)
    "neuroapi:session:{session}": "sessions",
    "neuroapi:account:{account}:usage:{month}": "usage",
    "neuroapi:billing:{account}": "billing",
    "neuroapi:billing-by-customer:v{pepper_version}:{customer_hmac}": "billing",  # keyed, as the email's
    "neuroapi:billing-by-customer:{customer}": "billing",  # ids from before sealing, until moved
    "neuroapi:billing-event:{event}": "billing",
    "neuroapi:billing:usage_report:{account}": "billing",
    "neuroapi:billing:usage_report:{account}:{month}": "billing",
    "neuroapi:ft:{name}:v{version}": "finetunes",  # versions whose owner_account is the account
}
# Shared keys and what of them is the account's.
SHARED_OF_ACCOUNT: dict[str, str] = {
    CALLS_STREAM: "calls",  # entries whose account_id is the account or key_prefix one of its keys
    AUDIT_STREAM: "audit",  # entries naming any of its identifiers, or a fine-tune version it owns
    "neuroapi:billing-accounts": "billing",  # membership only
}

SESSION_ID_SHOWN = 8
# Fields never exported, wherever they are: secrets, and what only serves to check one.
_KEY_SECRETS = frozenset({"digest", "ciphertext", "pepper_version", "envelope_version"})
_SECRET_NAME = re.compile(r"password|secret|token|digest|cipher|hash|pepper", re.IGNORECASE)
_STRIPE_FIELDS = ID_FIELDS  # the billing section has the ids, opened
_SCOPE_FIELDS = (IN_HOUSE_FIELD, EXCLUDED_FIELD)
_EMAIL_FIELDS = (EMAIL_SEALED, EMAIL_INDEX, LEGACY_EMAIL)  # the document has the email, opened
_INT = re.compile(r"-?\d{1,18}")
_TOKEN_SPLIT = re.compile(r"[\s,;:\"'()\[\]{}<>=/|\\]+")
_PAGE = 1000


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _number(value: str | None) -> int | str | None:
    """Redis keeps numbers as text: give them back as numbers in the document."""
    return int(value) if value is not None and _INT.fullmatch(value) else value


def _typed(fields: dict[str, str]) -> dict[str, Any]:
    return {name: _number(value) for name, value in fields.items()}


async def _scan(redis: aioredis.Redis, pattern: str) -> list[str]:
    return sorted({key async for key in redis.scan_iter(match=pattern, count=_PAGE)})


async def _stream(redis: aioredis.Redis, stream: str):
    """Every entry of ``stream``, oldest first, a page at a time."""
    start = "-"
    while True:
        page = await redis.xrange(stream, min=start, max="+", count=_PAGE)
        for entry_id, fields in page:
            yield entry_id, fields
        if len(page) < _PAGE:
            return
        start = "(" + page[-1][0]


def _mentions(fields: dict[str, str], identifiers: set[str]) -> bool:
    return any(identifiers.intersection(_TOKEN_SPLIT.split(value)) for value in fields.values())


async def export_account(redis: aioredis.Redis, account_id: str, sealer: AccountSealer) -> dict[str, Any]:
    """The account's document (shape in tests/unit/test_account_export.py and the docstring
    above). Raises LookupError for an account that does not exist (or was purged). The email is
    sealed at rest, and so are the Stripe ids: ``sealer`` opens them, so this runs where key
    material is (the verifier pool, the CLI)."""
    opened = await AccountStore(redis, sealer).get(account_id)
    stored = await redis.hgetall(account_key(account_id))
    if opened is None or not stored:
        raise LookupError("no such account")
    account: dict[str, Any] = {"id": account_id, "email": opened.email}
    for name, value in sorted(stored.items()):
        if (name not in _STRIPE_FIELDS and name not in _SCOPE_FIELDS and name not in _EMAIL_FIELDS
                and not _SECRET_NAME.search(name)):
            account[name] = _number(value)

    keys = await _keys(redis, account_id)
    prefixes = {key["prefix"] for key in keys}
    billing_state = await BillingStore(redis, sealer).state(account_id)  # the Stripe ids opened
    identifiers = {account_id, *prefixes, opened.email, billing_state.customer_id,
                   billing_state.subscription_id} - {""}
    finetunes = await _finetunes(redis, account_id)
    return {
        "object": "account_export",
        "exported_at": int(time.time()),
        "account": account,
        "keys": keys,
        "sessions": await _sessions(redis, account_id),
        "scope": Scope.from_fields(stored.get(IN_HOUSE_FIELD), stored.get(EXCLUDED_FIELD)).as_dict(),
        "billing": await _billing(redis, account_id, billing_state),
        "usage": await _usage(redis, account_id),
        "calls": await _calls(redis, account_id, prefixes),
        "audit": await _audit(redis, identifiers, finetunes),
        "finetunes": finetunes,
    }


async def _keys(redis: aioredis.Redis, account_id: str) -> list[dict[str, Any]]:
    """Each key's public fields (revoked ones too); never its digest or ciphertext."""
    out = []
    for prefix in sorted(await redis.smembers(account_prefixes_key(account_id))):
        record = await redis.hgetall(key_record_key(prefix))
        if not record or record.get("account_id") != account_id:
            continue
        entry: dict[str, Any] = {"prefix": prefix, "name": "", "status": None, "created_at": None,
                                 "revoked_at": None, "last_used_at": None}
        for name, value in record.items():
            if name != "account_id" and name not in _KEY_SECRETS and not _SECRET_NAME.search(name):
                entry[name] = _number(value) if name != "name" else value
        out.append(entry)
    return out


async def _sessions(redis: aioredis.Redis, account_id: str) -> list[dict[str, Any]]:
    """Live sessions: from the per-account index where it exists AND a scan of every session,
    since sessions opened before the index existed are only found by the scan."""
    found = {session_key(s) for s in await _index_members(redis, f"{account_key(account_id)}:sessions")}
    found.update(await _scan(redis, _glob_escape(session_key("")) + "*"))
    ordered = sorted(found)
    owners = await redis.mget(ordered) if ordered else []
    out = []
    for key, owner in zip(ordered, owners, strict=True):
        if owner == account_id:
            expires_at = await redis.expiretime(key)
            session_id = key[len(session_key("")):]
            out.append({"session_id_prefix": session_id[:SESSION_ID_SHOWN],
                        "expires_at": expires_at if expires_at > 0 else None})
    return sorted(out, key=lambda s: (s["expires_at"] or 0, s["session_id_prefix"]))


async def _index_members(redis: aioredis.Redis, key: str) -> list[str]:
    """The members of a per-account index, a set or a sorted set (by score); none if absent."""
    kind = await redis.type(key)
    if kind == "zset":
        return await redis.zrange(key, 0, -1)
    if kind == "set":
        return sorted(await redis.smembers(key))
    return []


async def _billing(redis: aioredis.Redis, account_id: str, state) -> dict[str, Any]:
    billing: dict[str, Any] = {
        "customer_id": state.customer_id, "subscription_id": state.subscription_id,
        "status": state.status, "status_at": state.status_at, "status_since": state.status_since,
        "period_start": state.period_start, "period_end": state.period_end,
        "billed_from_micro": state.billed_from_micro, "billed_from_month": state.billed_from_month,
    }
    billing["reported_from_month"] = await redis.hget(cursor_key(account_id), "open_from")
    reports = {}
    prefix = ledger_key(account_id, "")
    for key in await _scan(redis, _glob_escape(prefix) + "*"):
        reports[key[len(prefix):]] = _typed(await redis.hgetall(key))
    billing["usage_reports"] = reports
    events = []
    for key in await _scan(redis, _glob_escape(event_key("")) + "*"):
        if await redis.get(key) == account_id:
            events.append(key[len(event_key("")):])
    billing["stripe_events_applied"] = events
    return billing


async def _usage(redis: aioredis.Redis, account_id: str) -> dict[str, Any]:
    prefix = account_usage_key(account_id, "")
    months = [key[len(prefix):] for key in await _scan(redis, _glob_escape(prefix) + "*")]
    usage_store = UsageStore(redis)
    return {month: await usage_store.month(account_id, month) for month in sorted(months)}


async def _calls(redis: aioredis.Redis, account_id: str, prefixes: set[str]) -> list[dict[str, Any]]:
    """Per-call records made with its keys or counted to it (ids and counts: never content)."""
    out = []
    async for entry_id, fields in _stream(redis, CALLS_STREAM):
        if fields.get("account_id") == account_id or fields.get("key_prefix") in prefixes:
            out.append({"stream_id": entry_id, **_typed(fields)})
    return out


async def _audit(redis: aioredis.Redis, identifiers: set[str], finetunes: list[dict[str, Any]],
                 ) -> list[dict[str, Any]]:
    owned = {(ft["name"], str(ft["version"])) for ft in finetunes}
    out = []
    async for entry_id, fields in _stream(redis, AUDIT_STREAM):
        about_finetune = (fields.get("action", "").startswith("finetune.")
                          and (fields.get("name"), fields.get("version")) in owned)
        if about_finetune or _mentions(fields, identifiers):
            out.append({"stream_id": entry_id, **_typed(fields)})
    return out


async def _finetunes(redis: aioredis.Redis, account_id: str) -> list[dict[str, Any]]:
    """Fine-tune versions it owns; the artifact's path on our storage is ours, not its data."""
    registry = FineTuneRegistry(redis)
    out = []
    for name in await registry.names():
        for ft in await registry.versions(name):
            if ft.owner_account == account_id:
                out.append({"name": ft.name, "version": ft.version, "base_model": ft.base_model,
                            "digest": ft.digest, "state": ft.state, "deployed_by": ft.deployed_by,
                            "deployed_at_ms": ft.deployed_at_ms, "rank": ft.rank})
    return out
