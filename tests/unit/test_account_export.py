"""The account export against a real redis-server: an account with everything (keys, a revoked one,
sessions, usage in two months, calls, a scope change, billing and its usage reports, a fine-tune
it owns) next to another account just as full. The whole keyspace is walked, every stream entry
included: whatever names the account must be in its document, nothing of the other may be, and
no secret (password hash, key digest or ciphertext) ever is."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace

import pytest

from actors.accounts.export import KEYS_OF_ACCOUNT, SESSION_ID_SHOWN, SHARED_OF_ACCOUNT, export_account
from actors.accounts.passwords import hash_password
from actors.accounts.sealing import AccountSealer
from actors.accounts.sessions import SessionStore, SessionTokens, session_key
from actors.billing.reporter import Subscribed, UsageReporter, month_start
from actors.billing.store import BillingStore
from actors.keys.crypto import KeyCrypto
from actors.keys.store import KeyStore
from actors.metering.usage_store import CALLS_STREAM, UsageStore
from actors.routing.scopes import ScopeStore
from core.audit import AUDIT_STREAM, audit
from core.scope import EXCLUDED_FIELD, IN_HOUSE_FIELD, Scope
from finetunes.registry import FineTune, FineTuneRegistry
from tests.support.call_records import MARCH, record
from tests.support.key_material import ACCOUNTS_MATERIAL, account_store, material

APRIL_MS = month_start("2026-04") * 1000 + 3600_000
NOW = month_start("2026-04") + 86400  # the reporter's pass: March closed, April open
KEY_SECRET_FIELDS = ("digest", "ciphertext")
SEALER = AccountSealer(ACCOUNTS_MATERIAL)


@dataclass
class Built:
    """What setup made for one account: its identifiers, and what must (not) leak."""

    id: str
    email: str
    customer: str
    subscription: str
    prefixes: list[str] = field(default_factory=list)
    plaintexts: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    finetune: str = ""
    event: str = ""

    @property
    def identifiers(self) -> set[str]:
        """What a key name or value names the account by."""
        email_hash = hashlib.sha256(self.email.encode()).hexdigest()
        return {self.id, self.email, email_hash, self.customer, self.subscription, *self.prefixes}


class Meter:
    async def send_meter_event(self, event_name, customer_id, value, identifier, timestamp):
        return None


class Subscriptions:
    def __init__(self, *accounts: Subscribed):
        self._accounts = list(accounts)

    async def subscribed(self):
        return self._accounts


async def build(redis, crypto, tokens, email: str, tag: str) -> Built:
    account = await account_store(redis).create(email, hash_password("correct horse battery", 4))
    built = Built(account.id, account.email, f"cus_{tag}0001", f"sub_{tag}0001")
    keys = KeyStore(redis, crypto)
    for name in ("laptop", "ci", "old"):
        plaintext, info = await keys.create(account.id, f"{tag}-{name}")
        built.prefixes.append(info.prefix)
        built.plaintexts.append(plaintext)
    await keys.record_uses({built.prefixes[0]: NOW - 60})
    await keys.revoke(built.prefixes[2])
    sessions = SessionStore(redis)
    for _ in range(2):
        _, session = tokens.mint(account.id, 3600)
        await sessions.open(session)
        built.sessions.append(session.session_id)
    calls = [replace(record(account.id, cost=2_500_000, timestamp_ms=MARCH), key_prefix=built.prefixes[0]),
             replace(record(account.id, cost=1_200_000, timestamp_ms=APRIL_MS, mode=""),
                     key_prefix=built.prefixes[1]),
             # a call with its revoked key, refused before any account was known
             replace(record("", status=401, timestamp_ms=APRIL_MS), key_prefix=built.prefixes[2])]
    await UsageStore(redis).write(calls)
    built.request_ids = [call.request_id for call in calls]
    await ScopeStore(redis).set(account.id, Scope(excluded_providers=frozenset({"openai"})), "ops@neuroapi")
    billing = BillingStore(redis, SEALER)
    await billing.set_customer(account.id, built.customer)
    built.event = f"evt_{tag}0001"
    await billing.update_once(built.event, account.id, lambda state: replace(
        state, subscription_id=built.subscription, status="active", status_at=NOW - 500,
        status_since=NOW - 500, period_start=month_start("2026-03"), period_end=month_start("2026-04"),
        billed_from_micro=0, billed_from_month="2026-03"))
    await UsageReporter(redis, Meter(), "neuroapi_cost_units", 0, Subscriptions(
        Subscribed(account.id, built.customer, "active", "2026-03"))).report_once(now=NOW)
    registry = FineTuneRegistry(redis)
    built.finetune = f"{tag}-support"
    version = await registry.next_version(built.finetune)
    await registry.add(FineTune(built.finetune, version, "smollm2-135m-instruct", "sha256:" + "ab" * 32,
                                f"/srv/adapters/{built.finetune}/v1", account.id, "staged", "ops@neuroapi",
                                NOW * 1000, 8))
    await registry.make_live(built.finetune, version, "ops@neuroapi")
    return built


@pytest.fixture
async def two_accounts(redis):
    crypto = KeyCrypto(material())
    tokens = SessionTokens(material().peppers)
    ann = await build(redis, crypto, tokens, "ann@example.org", "ann")
    bob = await build(redis, crypto, tokens, "bob@example.net", "bob")
    # Not any account's: a fine-tune for everyone, and an audit entry about the system.
    registry = FineTuneRegistry(redis)
    version = await registry.next_version("shared-tone")
    await registry.add(FineTune("shared-tone", version, "smollm2-135m-instruct", "sha256:" + "cd" * 32,
                                "/srv/adapters/shared-tone/v1", None, "staged", "ops@neuroapi", NOW * 1000, 8))
    await audit(redis, "ops@neuroapi", "secrets.rotate", kind="pepper")
    return ann, bob


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name in re.findall(r"\{(\w+)\}", template):
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>[^:]+)")
    return re.compile(pattern)


TEMPLATES = [(template, _template_regex(template)) for template in KEYS_OF_ACCOUNT]


async def _values(redis, key: str, kind: str) -> list[str]:
    if kind == "string":
        return [await redis.get(key)]
    if kind == "hash":
        return [part for item in (await redis.hgetall(key)).items() for part in item]
    if kind == "set":
        return list(await redis.smembers(key))
    if kind == "zset":
        return list(await redis.zrange(key, 0, -1))
    if kind == "list":
        return list(await redis.lrange(key, 0, -1))
    raise AssertionError(f"{key}: a {kind} the walk cannot read")


async def _index(redis, key: str) -> list[str]:
    """A per-account index: a set, or a sorted set (SessionStore keeps one scored by expiry)."""
    kind = await redis.type(key)
    return list(await redis.zrange(key, 0, -1) if kind == "zset" else await redis.smembers(key))


def _leaves(document) -> list[str]:
    """Every key and value of the document, as text."""
    if isinstance(document, dict):
        return [text for k, v in document.items() for text in (str(k), *_leaves(v))]
    if isinstance(document, list):
        return [text for item in document for text in _leaves(item)]
    return [str(document)]


def _mentions(texts, identifiers: set[str]) -> bool:
    return any(ident in text for text in texts for ident in identifiers)


def _same_fields(where: str, exported: dict | None, stored: dict[str, str], skip=()) -> list[str]:
    if exported is None:
        return [f"{where}: missing from the export"]
    return [f"{where}: {name}={value!r} exported as {exported.get(name, '<absent>')!r}"
            for name, value in stored.items() if name not in skip and str(exported.get(name)) != value]


async def _check_key(redis, doc: dict, template: str, parts: dict[str, str], key: str) -> list[str]:
    """What the document must hold of one key of the account (read from Redis, not from setup)."""
    account, billing = doc["account"], doc["billing"]
    keys = {k["prefix"]: k for k in doc["keys"]}
    shown = {(s["session_id_prefix"], s["expires_at"]) for s in doc["sessions"]}
    if template == "neuroapi:account:{account}":
        fields = await redis.hgetall(key)
        scope = Scope.from_fields(fields.get(IN_HOUSE_FIELD), fields.get(EXCLUDED_FIELD)).as_dict()
        problems = [] if doc["scope"] == scope else [f"{key}: scope {scope} exported as {doc['scope']}"]
        stripe = {"customer_id": SEALER.open(fields["stripe_customer_sealed"]) if "stripe_customer_sealed"
                  in fields else fields.get("stripe_customer_id"),
                  "subscription_id": SEALER.open(fields["stripe_subscription_sealed"]) if "stripe_subscription_sealed"
                  in fields else fields.get("stripe_subscription_id")}
        problems += _same_fields(key + " (stripe ids)", billing, stripe)
        opened = SEALER.open(fields["email_sealed"]) if "email_sealed" in fields else fields.get("email")
        problems += [] if account.get("email") == opened else [f"{key}: its email is not the exported one"]
        return problems + _same_fields(key, account, fields, skip={
            "password_hash", IN_HOUSE_FIELD, EXCLUDED_FIELD, "stripe_customer_id", "stripe_subscription_id",
            "stripe_customer_sealed", "stripe_subscription_sealed", "stripe_customer_index",
            "email_sealed", "email_index", "email"})
    if template == "neuroapi:account-by-email:v{pepper_version}:{email_hmac}":
        ok = (SEALER.email_index_key(account["email"], int(parts["pepper_version"])) == key
              and await redis.get(key) == account["id"])
        return [] if ok else [f"{key}: its email is not the exported one"]
    if template == "neuroapi:account-by-email:{email_sha256}":
        ok = (hashlib.sha256(account["email"].encode()).hexdigest() == parts["email_sha256"]
              and await redis.get(key) == account["id"])
        return [] if ok else [f"{key}: its email is not the exported one"]
    if template == "neuroapi:account:{account}:keys":
        return [f"{key}: key {p} not exported" for p in await redis.smembers(key) if p not in keys]
    if template == "neuroapi:key:{prefix}":
        fields = await redis.hgetall(key)
        problems = [] if fields["account_id"] == account["id"] else [f"{key}: another account's key"]
        return problems + _same_fields(key, keys.get(parts["prefix"]), fields, skip={
            "account_id", "pepper_version", "envelope_version", *KEY_SECRET_FIELDS})
    if template == "neuroapi:account:{account}:sessions":
        live = [s for s in await _index(redis, key) if await redis.get(session_key(s)) == account["id"]]
        exported = {prefix for prefix, _ in shown}
        return [f"{key}: session {s[:4]}… not exported" for s in live if s[:SESSION_ID_SHOWN] not in exported]
    if template == "neuroapi:session:{session}":
        wanted = (parts["session"][:SESSION_ID_SHOWN], await redis.expiretime(key))
        return [] if wanted in shown else [f"{key}: session not exported"]
    if template == "neuroapi:account:{account}:usage:{month}":
        month = doc["usage"].get(parts["month"])
        if month is None:
            return [f"{key}: month not exported"]
        problems = []
        for name, value in (await redis.hgetall(key)).items():
            if name.startswith("mode:"):
                mode, _, counter = name[len("mode:"):].rpartition(":")
                got = month["by_mode"].get(mode, {}).get(counter)
            else:
                got = month.get(name)
            if got != int(value):
                problems.append(f"{key}: {name}={value} exported as {got}")
        return problems
    if template == "neuroapi:billing:{account}":
        return _same_fields(key, billing, await redis.hgetall(key))
    if template == "neuroapi:billing-by-customer:v{pepper_version}:{customer_hmac}":
        ok = (SEALER.customer_index_key(billing["customer_id"], int(parts["pepper_version"])) == key
              and await redis.get(key) == account["id"])
        return [] if ok else [f"{key}: customer not exported"]
    if template == "neuroapi:billing-by-customer:{customer}":
        ok = billing["customer_id"] == parts["customer"] and await redis.get(key) == account["id"]
        return [] if ok else [f"{key}: customer not exported"]
    if template == "neuroapi:billing-event:{event}":
        return [] if parts["event"] in billing["stripe_events_applied"] else [f"{key}: event not exported"]
    if template == "neuroapi:billing:usage_report:{account}":
        fields = await redis.hgetall(key)
        return _same_fields(key, {"open_from": billing["reported_from_month"]}, fields)
    if template == "neuroapi:billing:usage_report:{account}:{month}":
        return _same_fields(key, billing["usage_reports"].get(parts["month"]), await redis.hgetall(key))
    if template == "neuroapi:ft:{name}:v{version}":
        exported = next((ft for ft in doc["finetunes"]
                         if (ft["name"], str(ft["version"])) == (parts["name"], parts["version"])), None)
        return _same_fields(key, exported, await redis.hgetall(key), skip={"artifact_path", "owner_account"})
    return [f"{key}: the test knows no check for {template}"]


async def _walk(redis, doc: dict, of: Built) -> tuple[list[str], set[str]]:
    """(problems, templates seen): every key and stream entry naming ``of`` against ``doc``."""
    problems: list[str] = []
    seen: set[str] = set()
    identifiers = of.identifiers
    for key in sorted([k async for k in redis.scan_iter("*", count=1000)]):
        kind = await redis.type(key)
        if kind == "stream":
            section = SHARED_OF_ACCOUNT.get(key)
            exported = {entry["stream_id"]: entry for entry in doc.get(section, [])} if section else {}
            for entry_id, fields in await redis.xrange(key):
                if _mentions(fields.values(), identifiers):
                    if section is None:
                        problems.append(f"{key} {entry_id}: names the account in a stream the export skips")
                    else:
                        problems += _same_fields(f"{key} {entry_id}", exported.get(entry_id), fields)
            continue
        if not _mentions([key, *await _values(redis, key, kind)], identifiers):
            continue
        if key in SHARED_OF_ACCOUNT:  # a shared index: membership only, its section must exist
            seen.add(key)
            if not doc.get(SHARED_OF_ACCOUNT[key]):
                problems.append(f"{key}: section {SHARED_OF_ACCOUNT[key]} is empty")
            continue
        matches = [(t, m) for t, m in ((t, rx.fullmatch(key)) for t, rx in TEMPLATES) if m]
        if not matches:
            problems.append(f"{key}: names the account but is no key the export knows")
            continue
        template, match = matches[0]
        seen.add(template)
        problems += await _check_key(redis, doc, template, match.groupdict(), key)
    return problems, seen


async def test_the_export_holds_every_key_and_entry_naming_the_account_and_nothing_else(redis, two_accounts):
    ann, bob = two_accounts
    doc = await export_account(redis, ann.id, SEALER)
    assert json.loads(json.dumps(doc)) == doc  # one JSON document, as is

    problems, seen = await _walk(redis, doc, ann)
    assert not problems, "the export misses what Redis holds about the account:\n  " + "\n  ".join(problems)

    leaves = _leaves(doc)
    others = bob.identifiers | set(bob.request_ids) | {bob.finetune, bob.event} | {
        s[:SESSION_ID_SHOWN] for s in bob.sessions}
    leaked = sorted({o for o in others for text in leaves if o in text})
    assert not leaked, f"the other account's data is in the export: {leaked}"
    assert "shared-tone" not in leaves and "secrets.rotate" not in leaves
    # The walk is not vacuous: setup made every kind of key (the session index only where
    # SessionStore keeps one) and entries in both streams.
    expected = set(KEYS_OF_ACCOUNT) - {"neuroapi:account:{account}:sessions",
                                       "neuroapi:account-by-email:{email_sha256}",
                                       "neuroapi:billing-by-customer:{customer}"} | {"neuroapi:billing-accounts"}
    assert expected <= seen
    assert len(doc["calls"]) == 3 and {c["request_id"] for c in doc["calls"]} == set(ann.request_ids)
    assert [a["action"] for a in doc["audit"]] == ["scope.set", "finetune.stage", "finetune.deploy"]


async def test_no_secret_is_ever_exported(redis, two_accounts):
    ann, _ = two_accounts
    doc = await export_account(redis, ann.id, SEALER)
    leaves = _leaves(doc)
    secrets = [await account_store(redis).password_hash(ann.id), *ann.plaintexts, *ann.sessions]
    for prefix in ann.prefixes:
        secrets += await redis.hmget(f"neuroapi:key:{prefix}", *KEY_SECRET_FIELDS)
    assert all(s and len(s) > SESSION_ID_SHOWN for s in secrets)
    assert not [s for s in secrets if any(s in text for text in leaves)]
    assert "password_hash" not in leaves
    assert not {"digest", "ciphertext", "pepper_version", "envelope_version"} & {
        name for key in doc["keys"] for name in key}


async def test_the_user_sees_its_keys_revoked_ones_too_and_its_months(redis, two_accounts):
    ann, _ = two_accounts
    doc = await export_account(redis, ann.id, SEALER)
    assert doc["object"] == "account_export" and doc["account"]["email"] == "ann@example.org"
    keys = {k["name"]: k for k in doc["keys"]}
    assert keys["ann-old"]["status"] == "revoked" and keys["ann-old"]["revoked_at"] >= NOW - 86400
    assert keys["ann-laptop"]["last_used_at"] == NOW - 60 and keys["ann-ci"]["revoked_at"] is None
    assert sorted(doc["usage"]) == ["2026-03", "2026-04"]
    assert doc["usage"]["2026-03"]["cost_micro_units"] == 2_500_000
    assert doc["scope"] == {"in_house_only": False, "excluded_providers": ["openai"]}
    assert doc["billing"]["status"] == "active" and doc["billing"]["customer_id"] == ann.customer
    assert doc["billing"]["usage_reports"]["2026-03"]["reported_micro"] == 2_000_000
    assert [(f["name"], f["state"]) for f in doc["finetunes"]] == [("ann-support", "live")]
    assert len(doc["sessions"]) == 2 and all(s["expires_at"] > NOW for s in doc["sessions"])


async def test_sessions_are_found_with_and_without_the_per_account_index(redis):
    ann = await account_store(redis).create("ann@example.org")
    bob = await account_store(redis).create("bob@example.net")
    tokens = SessionTokens(material().peppers)
    opened = {}
    for account in (ann, bob):
        _, session = tokens.mint(account.id, 3600)
        await SessionStore(redis).open(session)  # indexed, if SessionStore keeps the index
        opened[account.id] = session
    # A session from before the index existed, and a stale index member (its session expired).
    await redis.set(session_key("legacyLegacyLegacy00"), ann.id, ex=600)
    index = f"neuroapi:account:{ann.id}:sessions"
    if await redis.type(index) == "zset":
        await redis.zadd(index, {"expiredExpiredExpir0": 1})
    else:
        await redis.sadd(index, "expiredExpiredExpir0")

    sessions = (await export_account(redis, ann.id, SEALER))["sessions"]
    assert sorted(s["session_id_prefix"] for s in sessions) == sorted(
        [opened[ann.id].session_id[:SESSION_ID_SHOWN], "legacyLe"])


async def test_an_unknown_account_has_no_export(redis):
    with pytest.raises(LookupError):
        await export_account(redis, "acct_0000000000000000", SEALER)
    assert not [k async for k in redis.scan_iter("*")]  # and reading wrote nothing


async def test_calls_and_audit_are_found_across_stream_pages(redis, monkeypatch):
    from actors.accounts import export

    monkeypatch.setattr(export, "_PAGE", 2)
    account = await account_store(redis).create("ann@example.org")
    calls = [record(account.id, timestamp_ms=MARCH + i) for i in range(5)]
    await UsageStore(redis).write(calls + [record("acct_someoneelse0000", timestamp_ms=MARCH + 9)])
    for _ in range(3):
        await audit(redis, "ops", "scope.set", account_id=account.id)
    doc = await export_account(redis, account.id, SEALER)
    assert [c["request_id"] for c in doc["calls"]] == [c.request_id for c in calls]
    assert len(doc["audit"]) == 3 and await redis.xlen(CALLS_STREAM) == 6 and await redis.xlen(AUDIT_STREAM) == 3
