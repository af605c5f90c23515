"""Accounts and keys against a real redis-server (our own, on a free port)."""

import asyncio

import pytest
import redis.asyncio as aioredis

from actors.accounts.store import AccountError
from actors.keys.crypto import KeyCrypto
from actors.keys.store import KeyStore, key_record_key
from core.invalidation import InvalidationListener, InvalidationTimeout, broadcast
from core.key_format import generate_key
from tests.support.key_material import account_store, material


@pytest.fixture
def crypto():
    return KeyCrypto(material())


async def new_account(redis, email=None):
    import secrets
    return await account_store(redis).create(email or f"user-{secrets.token_hex(4)}@example.com")


async def test_emails_are_normalised_unique_and_not_in_key_names(redis):
    account = await new_account(redis, "  Alice.Smith@Example.COM ")
    assert account.email == "alice.smith@example.com"
    with pytest.raises(AccountError):
        await account_store(redis).create("alice.smith@example.com")
    with pytest.raises(AccountError):
        await account_store(redis).create("not-an-email")
    assert not [k async for k in redis.scan_iter("*alice*")]


async def test_a_minted_key_verifies_and_only_its_hash_and_ciphertext_are_stored(redis, crypto):
    account = await new_account(redis)
    store = KeyStore(redis, crypto)
    plaintext, info = await store.create(account.id, "ci")
    verified = await store.verify(plaintext)
    assert (verified.prefix, verified.account_id) == (info.prefix, account.id)
    secret = plaintext.split("_")[2]
    for key in [k async for k in redis.scan_iter("*")]:
        kind = await redis.type(key)
        values = (await redis.hgetall(key)).values() if kind == "hash" else [await redis.get(key)] if kind == "string" else await redis.smembers(key) if kind == "set" else []
        assert all(secret not in str(v) and plaintext not in str(v) for v in values)
    record = await redis.hgetall(key_record_key(info.prefix))
    assert set(record) >= {"digest", "pepper_version", "ciphertext", "envelope_version", "account_id"}
    assert crypto.open(record["ciphertext"]) == plaintext


async def test_wrong_secret_unknown_prefix_and_bad_checksum_fail(redis, crypto):
    account = await new_account(redis)
    store = KeyStore(redis, crypto)
    plaintext, info = await store.create(account.id)
    unknown, _ = generate_key()
    forged_prefix = info.prefix + "_" + unknown.split("_")[2]  # right prefix, another secret
    assert await store.verify(unknown) is None
    assert await store.verify(forged_prefix) is None
    assert await store.verify(plaintext[:-1] + "x") is None


async def test_list_shows_prefixes_and_names_never_secrets(redis, crypto):
    account = await new_account(redis)
    store = KeyStore(redis, crypto)
    first, _ = await store.create(account.id, "one")
    second, _ = await store.create(account.id, "two")
    listed = await store.list(account.id)
    assert sorted(i.name for i in listed) == ["one", "two"]
    assert all(first not in repr(i) and second not in repr(i) for i in listed)


async def test_revoked_key_fails_and_every_listener_confirmed_first(own_redis, redis, crypto):
    account = await new_account(redis)
    store = KeyStore(redis, crypto)
    plaintext, info = await store.create(account.id)
    dropped: list[list[str]] = [[], []]
    listeners = [InvalidationListener(own_redis.url, lambda t, s, i=i: dropped[i].append(s), lambda: None)
                 for i in range(2)]
    for listener in listeners:
        listener.start()
    for _ in range(100):
        if all(listener.healthy for listener in listeners):
            break
        await asyncio.sleep(0.05)
    assert await store.revoke(info.prefix) == 2
    # broadcast returned only after both listeners ran their handler
    assert dropped == [[info.prefix], [info.prefix]]
    assert await store.verify(plaintext) is None
    assert (await store.list(account.id))[0].status == "revoked"
    for listener in listeners:
        await listener.stop()


async def test_broadcast_fails_loudly_when_a_receiver_never_confirms(own_redis, redis):
    silent = aioredis.Redis.from_url(own_redis.url).pubsub()
    await silent.subscribe("neuroapi:invalidate")  # receives, never acknowledges
    with pytest.raises(InvalidationTimeout):
        await broadcast(redis, "key", "neuro_aaaaaaaa", timeout_s=0.5)
    await silent.aclose()


async def test_a_listener_that_loses_redis_turns_unhealthy_and_clears(own_redis, redis):
    resets = []
    listener = InvalidationListener(own_redis.url, lambda t, s: None, lambda: resets.append(1))
    listener.start()
    for _ in range(100):
        if listener.healthy:
            break
        await asyncio.sleep(0.05)
    assert listener.healthy
    before = len(resets)
    await redis.client_kill_filter(_type="pubsub")
    for _ in range(100):
        if len(resets) > before:
            break
        await asyncio.sleep(0.02)
    assert len(resets) > before  # the cache owner was told to drop everything
    for _ in range(100):
        if listener.healthy:
            break
        await asyncio.sleep(0.05)
    assert listener.healthy  # and it came back on its own
    await listener.stop()
