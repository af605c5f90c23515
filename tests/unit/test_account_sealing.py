"""Account data sealed at rest (``actors.accounts.sealing``) on a real redis-server: Redis alone
reveals no address in any form; log-in, duplicate sign-ups, lookups, purge and rotation keep
working; a record written before sealing (plaintext email, SHA-256 index) is read and moved."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from actors.accounts.deletion import delete_account, purge_due
from actors.accounts.passwords import hash_password
from actors.accounts.sealing import AccountSealer, SealError, legacy_customer_index_key, legacy_email_index_key
from actors.accounts.service import AccountService
from actors.accounts.store import Account, AccountExists, Resealed, account_key
from actors.billing.store import BillingStore, billing_key
from actors.keys.material import ReplicaKeyMaterial
from actors.keys.rotation import migrate_accounts, rotate
from config.secrets import KeyMaterial, load_key_material
from config.settings import load_settings
from tests.support.key_material import account_store, material

PASSWORD = "correct horse battery"


def forms(email: str) -> set[str]:
    """Every form of an address that must not be in Redis."""
    lowered = email.lower()
    return {email, lowered, hashlib.sha256(email.encode()).hexdigest(),
            hashlib.sha256(lowered.encode()).hexdigest(), legacy_email_index_key(lowered)}


async def everything_in(redis) -> list[str]:
    """Every key name, hash field, value, member and stream entry, as text."""
    texts = []
    async for key in redis.scan_iter(count=1000):
        texts.append(key)
        kind = await redis.type(key)
        if kind == "string":
            texts.append(await redis.get(key))
        elif kind == "hash":
            texts += [part for item in (await redis.hgetall(key)).items() for part in item]
        elif kind == "set":
            texts += list(await redis.smembers(key))
        elif kind == "zset":
            texts += list(await redis.zrange(key, 0, -1))
        elif kind == "list":
            texts += list(await redis.lrange(key, 0, -1))
        elif kind == "stream":
            texts += [part for _, fields in await redis.xrange(key) for item in fields.items() for part in item]
    return texts


async def leaked(redis, *emails: str) -> list[str]:
    texts = await everything_in(redis)
    return sorted({form for email in emails for form in forms(email) for text in texts if form in text})


async def write_legacy(redis, email: str, password_hash: str = "") -> str:
    """An account as the store wrote it before sealing: plaintext email, SHA-256 index."""
    account_id = "acct_" + hashlib.sha256(email.encode()).hexdigest()[:16]
    await redis.set(legacy_email_index_key(email), account_id)
    await redis.hset(account_key(account_id), mapping={
        "email": email, "status": "active", "created_at": int(time.time()),
        "stripe_customer_id": "", "stripe_subscription_id": "", "password_hash": password_hash})
    return account_id


def with_versions(old: KeyMaterial, peppers=None, envelopes=None) -> KeyMaterial:
    """``old`` plus newer versions (as a rotation adds them)."""
    new = material(peppers or (), envelopes or ()) if (peppers or envelopes) else None
    return KeyMaterial({**old.peppers, **(new.peppers if new else {})},
                       {**old.envelope_keys, **(new.envelope_keys if new else {})}, "test")


async def test_redis_holds_no_address_in_any_form_and_lookups_still_work(redis):
    key = material()
    accounts = account_store(redis, key)
    ann = await accounts.create("Ann.Smith@Example.org", hash_password(PASSWORD, 4))
    bob = await accounts.create("bob@example.net")
    assert await leaked(redis, "Ann.Smith@Example.org", "bob@example.net") == []
    assert (await accounts.by_email("  ANN.smith@example.ORG ")).id == ann.id
    assert (await accounts.get(bob.id)).email == "bob@example.net"
    assert await accounts.email_of(ann.id) == "ann.smith@example.org"
    # The index is keyed: without the pepper the name cannot be computed from the address.
    other = account_store(redis, material())
    assert await other.by_email("bob@example.net") is None
    # Log-in goes through the keyed index.
    service = AccountService(redis, lambda: key, password_rounds=4)
    assert await service.login("ann.smith@example.org", PASSWORD) is not None
    assert await service.login("ann.smith@example.org", "wrong password!") is None


async def test_a_duplicate_sign_up_is_refused_whatever_version_indexes_the_first(redis):
    key = material()
    await account_store(redis, key).create("dup@example.com")
    with pytest.raises(AccountExists):
        await account_store(redis, key).create("DUP@example.com")
    # After a pepper rotation (before the record moved) and against a pre-sealing record.
    with pytest.raises(AccountExists):
        await account_store(redis, with_versions(key, peppers=(2,))).create("dup@example.com")
    await write_legacy(redis, "old@example.com")
    with pytest.raises(AccountExists):
        await account_store(redis, key).create("old@example.com")


async def test_a_record_written_before_sealing_works_and_is_sealed_on_its_next_touch(redis):
    key = material()
    account_id = await write_legacy(redis, "legacy@example.com", hash_password(PASSWORD, 4))
    assert len(await leaked(redis, "legacy@example.com")) == 3  # the scan sees plain, SHA-256, index
    service = AccountService(redis, lambda: key, password_rounds=4)
    token, session = await service.login("Legacy@example.com", PASSWORD)  # the touch
    assert session.account_id == account_id and await service.session(token) == session
    fields = await redis.hgetall(account_key(account_id))
    assert "email" not in fields and fields["email_sealed"].startswith("v1:")
    assert fields["email_index"] == AccountSealer(key).email_index_key("legacy@example.com")
    assert await redis.get(legacy_email_index_key("legacy@example.com")) is None
    assert await leaked(redis, "legacy@example.com") == []
    assert (await account_store(redis, key).by_email("legacy@example.com")).id == account_id


async def test_a_record_written_before_sealing_is_moved_by_the_migration_and_purged_without_it(redis):
    key = material()
    moved = await write_legacy(redis, "moved@example.com")
    untouched = await write_legacy(redis, "untouched@example.com")
    report = await migrate_accounts(redis, AccountSealer(key))
    assert (report.migrated, report.left) == (2, 0)
    assert await leaked(redis, "moved@example.com", "untouched@example.com") == []
    assert (await migrate_accounts(redis, AccountSealer(key))).migrated == 0  # re-running: a no-op
    # The purge (no key material) removes the keyed index by the name the hash keeps ...
    await delete_account(redis, moved)
    assert await purge_due(redis) == [moved]
    assert [k async for k in redis.scan_iter(match="neuroapi:account-by-email:*")] == [
        AccountSealer(key).email_index_key("untouched@example.com")]
    # ... and a pre-sealing record's SHA-256 index, never touched, as well.
    legacy = await write_legacy(redis, "never@example.com")
    await delete_account(redis, legacy)
    await purge_due(redis)
    assert await redis.get(legacy_email_index_key("never@example.com")) is None
    assert await account_store(redis, key).create("moved@example.com")  # the address is free again


async def test_lookups_under_a_new_pepper_find_old_records_and_move_them(redis):
    old = material()
    account = await account_store(redis, old).create("rot@example.com")
    old_index = AccountSealer(old).email_index_key("rot@example.com")
    new = with_versions(old, peppers=(2,), envelopes=(2,))
    accounts = account_store(redis, new)
    assert (await accounts.by_email("rot@example.com")).id == account.id  # found under v1, moved
    fields = await redis.hgetall(account_key(account.id))
    assert fields["email_index"] == AccountSealer(new).email_index_key("rot@example.com")
    assert fields["email_index"].startswith("neuroapi:account-by-email:v2:")
    assert fields["email_sealed"].startswith("v2:")
    assert await redis.get(old_index) is None
    # A process still on the old material never moves a record back.
    assert await account_store(redis, old).reseal(account.id) == Resealed.UNREADABLE
    assert await redis.hget(account_key(account.id), "email_sealed") == fields["email_sealed"]


async def test_rotations_reseal_every_account_after_the_replicas_reload(redis, own_redis, tmp_path):
    base = load_settings(environ={"NEUROAPI_DATA_DIR": str(tmp_path)})
    load_key_material(base, create=True, environ={})
    settings = load_settings(environ={"NEUROAPI_DATA_DIR": str(tmp_path),
                                      "NEUROAPI_SECRETS_FILE": str(tmp_path / "secrets.json")})
    replica = ReplicaKeyMaterial(lambda: load_key_material(settings, environ={})[0])
    replica.listen(own_redis.url)
    try:
        for _ in range(100):
            if replica.listening:
                break
            await asyncio.sleep(0.02)
        service = AccountService(redis, replica.current, password_rounds=4)  # a verifier replica's
        signed_up = await service.signup("sealed@example.com", PASSWORD)
        legacy = await write_legacy(redis, "legacy2@example.com", hash_password(PASSWORD, 4))
        for kind, field, prefix in (("envelope", "email_sealed", "v2:"), ("pepper", "email_index",
                                                                          "neuroapi:account-by-email:v2:")):
            report = await rotate(redis, settings, kind, environ={})
            assert report.accounts.left == 0 and report.left == 0
            for account_id in (signed_up.id, legacy):
                assert (await redis.hget(account_key(account_id), field)).startswith(prefix)
        assert await leaked(redis, "sealed@example.com", "legacy2@example.com") == []
        # The replica reloaded both new versions: log-in and lookups keep working.
        assert await service.login("sealed@example.com", PASSWORD) is not None
        assert await service.login("legacy2@example.com", PASSWORD) is not None
        assert (await service.accounts.by_email("legacy2@example.com")).id == legacy
    finally:
        await replica.stop()


async def stripe_ids_seen(redis, *ids: str) -> list[str]:
    """Every Stripe id that Redis shows, in a key name or any value."""
    texts = await everything_in(redis) + [key async for key in redis.scan_iter("*")]
    return sorted({i for i in ids for text in texts if i in text})


async def test_stripe_ids_are_sealed_and_indexed_keyed_and_old_ones_moved_by_the_migration(redis):
    """The Stripe ids (issue 18, item 4): sealed in the account hash, the customer index keyed;
    ids from before sealing (plaintext fields, ``neuroapi:billing-by-customer:<id>``, and the
    plaintext a purge moved into ``neuroapi:billing:<id>``) are moved by the migration, which
    also reseals them under a new envelope key and pepper."""
    old = material()
    sealed = (await account_store(redis, old).create("sealed-ids@example.com")).id
    await BillingStore(redis, AccountSealer(old)).set_customer(sealed, "cus_SEALED01")
    legacy = await write_legacy(redis, "legacy-ids@example.com")
    await redis.hset(account_key(legacy), mapping={"stripe_customer_id": "cus_LEGACY01",
                                                   "stripe_subscription_id": "sub_LEGACY01"})
    await redis.set(legacy_customer_index_key("cus_LEGACY01"), legacy)
    # An account purged before sealing existed: its billing record kept the plaintext ids.
    await redis.hset(billing_key("acct_purgedlong"), mapping={
        "status": "canceled", "stripe_customer_id": "cus_PURGED01", "stripe_subscription_id": "sub_PURGED01"})
    ids = ("cus_SEALED01", "cus_LEGACY01", "sub_LEGACY01", "cus_PURGED01", "sub_PURGED01")
    assert await stripe_ids_seen(redis, *ids) == ["cus_LEGACY01", "cus_PURGED01", "sub_LEGACY01", "sub_PURGED01"]

    new = with_versions(old, peppers=(2,), envelopes=(2,))
    report = await migrate_accounts(redis, AccountSealer(new))
    assert report.left == 0 and report.migrated >= 3
    assert await stripe_ids_seen(redis, *ids) == []
    store = BillingStore(redis, AccountSealer(new))
    for account_id, customer, subscription in ((sealed, "cus_SEALED01", ""), (legacy, "cus_LEGACY01", "sub_LEGACY01")):
        fields = await redis.hgetall(account_key(account_id))
        assert fields["stripe_customer_sealed"].startswith("v2:")
        assert fields["stripe_customer_index"] == AccountSealer(new).customer_index_key(customer, 2)
        assert await store.account_for_customer(customer) == account_id
        assert (await store.state(account_id)).subscription_id == subscription
    retained = await redis.hgetall(billing_key("acct_purgedlong"))
    assert AccountSealer(new).open(retained["stripe_customer_sealed"]) == "cus_PURGED01"
    assert retained["stripe_subscription_sealed"].startswith("v2:") and retained["status"] == "canceled"
    assert (await migrate_accounts(redis, AccountSealer(new))).migrated == 0  # re-running: a no-op
    # The purge (no key material) deletes the keyed customer index by the name the hash keeps.
    await delete_account(redis, legacy)
    assert await purge_due(redis) == [legacy]
    assert [k async for k in redis.scan_iter(match="neuroapi:billing-by-customer:*")] == [
        AccountSealer(new).customer_index_key("cus_SEALED01")]
    kept = await redis.hgetall(billing_key(legacy))
    assert AccountSealer(new).open(kept["stripe_subscription_sealed"]) == "sub_LEGACY01"
    assert await stripe_ids_seen(redis, *ids) == []


def test_nothing_shows_an_address_or_key_material():
    key = material()
    sealer = AccountSealer(key)
    sealed = sealer.seal("private@example.com")
    assert "private" not in sealed and sealer.open(sealed) == "private@example.com"
    assert "private" not in repr(sealer)
    assert "private" not in repr(Account("acct_x", "private@example.com", "active", 0))
    with pytest.raises(SealError) as raised:
        AccountSealer(material()).open(sealed)
    assert "private" not in str(raised.value) and sealed not in str(raised.value)
    with pytest.raises(SealError):
        sealer.open("private@example.com")  # a plaintext is not a sealed value
