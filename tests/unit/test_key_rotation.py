"""Secret rotation against a real redis-server of this module's own, with real invalidation
listeners standing in for verifier replicas (no Ray)."""

import asyncio
import base64
import json
import os
import stat
import threading

import pytest

from actors.keys.crypto import InvalidToken, KeyCrypto
from actors.keys.material import ReplicaKeyMaterial
from actors.keys.rotation import ReplicasNotReady, migrate, rotate
from actors.keys.store import KeyStore, key_record_key
from config.secrets import KeyMaterial, add_key_version, load_key_material
from config.settings import ConfigError, load_settings
from tests.support.key_material import account_store


@pytest.fixture
def settings(tmp_path):
    """Settings whose key material is a secrets file with version 1 of each."""
    base = load_settings(environ={"NEUROAPI_DATA_DIR": str(tmp_path)})
    load_key_material(base, create=True, environ={})  # writes <data_dir>/secrets.json
    return load_settings(environ={"NEUROAPI_DATA_DIR": str(tmp_path),
                                  "NEUROAPI_SECRETS_FILE": str(tmp_path / "secrets.json")})


def material_of(settings, environ=None) -> KeyMaterial:
    return load_key_material(settings, environ={} if environ is None else environ)[0]


@pytest.fixture
async def replicas(own_redis, settings):
    """Two replicas that hold key material and follow rotations, as KeyVerifier replicas do."""
    started = [ReplicaKeyMaterial(lambda: material_of(settings)) for _ in range(2)]
    for replica in started:
        replica.listen(own_redis.url)
    await until(lambda: all(r.listening for r in started))
    yield started
    for replica in started:
        await replica.stop()


async def until(condition, timeout_s=5.0):
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def mint(redis, crypto, count, name="k"):
    account = await account_store(redis).create(f"rot-{os.urandom(4).hex()}@example.com")
    store = KeyStore(redis, crypto)
    return account, [(await store.create(account.id, name))[0] for _ in range(count)]


async def records(redis):
    return {key: await redis.hgetall(key) async for key in redis.scan_iter(match=key_record_key("*"))}


def test_add_key_version_adds_the_next_version_atomically_and_keeps_0600(settings):
    path = settings.secrets_file
    before = json.loads(path.read_text())
    assert add_key_version(path, "pepper") == 2
    assert add_key_version(path, "envelope") == 2
    assert add_key_version(path, "pepper") == 3
    after = json.loads(path.read_text())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(after["peppers"]) == ["1", "2", "3"] and sorted(after["envelope_keys"]) == ["1", "2"]
    assert after["peppers"]["1"] == before["peppers"]["1"]  # older versions stay
    material = material_of(settings)
    assert KeyCrypto(material).pepper_version == 3 and KeyCrypto(material).envelope_version == 2
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_version_adds_never_lose_one(settings):
    added: list[int] = []

    def add_some():
        for _ in range(10):
            added.append(add_key_version(settings.secrets_file, "pepper"))

    threads = [threading.Thread(target=add_some) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(added) == list(range(2, 22))
    assert sorted(material_of(settings).peppers) == list(range(1, 22))


def test_a_broken_secrets_file_is_refused_without_showing_its_content(settings):
    path = settings.secrets_file
    content = json.loads(path.read_text())
    content["peppers"]["1"] = "short"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as error:
        add_key_version(path, "pepper")
    assert "short" not in str(error.value)
    assert json.loads(path.read_text()) == content  # untouched


async def test_rotate_pepper_moves_every_record_and_every_key_still_verifies(redis, settings, replicas):
    old = KeyCrypto(material_of(settings))
    account, keys = await mint(redis, old, 12)
    before = await records(redis)
    report = await rotate(redis, settings, "pepper", environ={})
    assert (report.kind, report.version, report.added_to) == ("pepper", 2, str(settings.secrets_file))
    assert report.replicas == 2  # both replicas reloaded before any record moved
    assert (report.migration.migrated, report.migration.skipped, report.migration.left) == (12, 0, 0)
    after = await records(redis)
    for key, record in after.items():
        assert record["pepper_version"] == "2" and record["digest"] != before[key]["digest"]
        assert record["ciphertext"] == before[key]["ciphertext"]  # the envelope is not touched
    for replica in replicas:
        assert replica.crypto.pepper_version == 2 and 2 in replica.current().peppers
        store = KeyStore(redis, replica.crypto)
        assert [(await store.verify(key)).account_id for key in keys] == [account.id] * 12
    # and only under the new pepper: a keyring without pepper 1 verifies every key
    only_new = material_of(settings)
    only_new = KeyMaterial({2: only_new.peppers[2]}, only_new.envelope_keys, "test")
    assert all([await KeyStore(redis, KeyCrypto(only_new)).verify(key) for key in keys])
    summary = report.summary()
    assert "12 record(s) migrated, 0 skipped, 0 left" in summary
    assert not any(value in summary for value in json.loads(settings.secrets_file.read_text())["peppers"].values())


async def test_rotate_envelope_leaves_every_ciphertext_under_the_new_key_only(redis, settings, replicas):
    _, keys = await mint(redis, KeyCrypto(material_of(settings)), 8)
    before = await records(redis)
    report = await rotate(redis, settings, "envelope", environ={})
    assert (report.version, report.migration.migrated, report.replicas) == (2, 8, 2)
    material = material_of(settings)
    only_new = KeyCrypto(KeyMaterial(material.peppers, {2: material.envelope_keys[2]}, "test"))
    only_old = KeyCrypto(KeyMaterial(material.peppers, {1: material.envelope_keys[1]}, "test"))
    opened = set()
    for key, record in (await records(redis)).items():
        assert record["envelope_version"] == "2"
        assert record["digest"] == before[key]["digest"]  # the pepper is not touched
        opened.add(only_new.open(record["ciphertext"]))
        with pytest.raises(InvalidToken):
            only_old.open(record["ciphertext"])
    assert opened == set(keys)


async def test_rerunning_is_a_no_op_and_resume_adds_no_version(redis, settings, replicas):
    _, keys = await mint(redis, KeyCrypto(material_of(settings)), 5)
    await rotate(redis, settings, "pepper", environ={})
    snapshot = await records(redis)
    crypto = KeyCrypto(material_of(settings))
    again = await migrate(redis, crypto, "pepper")
    assert (again.migrated, again.skipped, again.left) == (0, 5, 0)
    resumed = await rotate(redis, settings, "pepper", add_version=False, environ={})
    assert (resumed.version, resumed.added_to, resumed.migration.migrated) == (2, None, 0)
    assert sorted(material_of(settings).peppers) == [1, 2]
    assert await records(redis) == snapshot


async def test_a_revoked_key_stays_revoked_through_rotation_even_concurrently(redis, settings, replicas):
    crypto = KeyCrypto(material_of(settings))
    _, keys = await mint(redis, crypto, 10)
    store = KeyStore(redis, crypto)
    revoked_before = keys[0].rsplit("_", 1)[0]
    await store.revoke(revoked_before)
    revoked_during = [key.rsplit("_", 1)[0] for key in keys[1:6]]
    await asyncio.gather(rotate(redis, settings, "pepper", environ={}),
                         *(store.revoke(prefix) for prefix in revoked_during))
    await rotate(redis, settings, "envelope", environ={})
    after = await records(redis)
    assert {r["pepper_version"] for r in after.values()} == {"2"}
    assert {r["envelope_version"] for r in after.values()} == {"2"}
    verifier = KeyStore(redis, replicas[0].crypto)
    for key in keys:
        prefix = key.rsplit("_", 1)[0]
        revoked = prefix in revoked_during or prefix == revoked_before
        assert after[key_record_key(prefix)]["status"] == ("revoked" if revoked else "active")
        assert (await verifier.verify(key) is None) == revoked


async def test_keys_created_during_a_rotation_are_not_lost(redis, settings):
    old = KeyCrypto(material_of(settings))
    account, existing = await mint(redis, old, 30)
    add_key_version(settings.secrets_file, "pepper")
    new = KeyCrypto(material_of(settings))
    # Creators that loaded their material before the new version existed, and after.
    stores = [KeyStore(redis, old), KeyStore(redis, new)]
    created_during: list[str] = []

    async def create_some():
        for i in range(20):
            created_during.append((await stores[i % 2].create(account.id, "during"))[0])
            await asyncio.sleep(0)

    result, _ = await asyncio.gather(migrate(redis, new, "pepper"), create_some())
    assert result.left == 0
    await migrate(redis, new, "pepper")  # whatever an old creator wrote after the last pass
    after = await records(redis)
    assert len(after) == 50
    assert {r["pepper_version"] for r in after.values()} == {"2"}
    assert all(set(r) >= {"account_id", "status", "digest", "ciphertext"} for r in after.values())
    verifier = KeyStore(redis, new)
    assert all([await verifier.verify(key) for key in existing + created_during])


async def test_a_replica_without_the_new_version_stops_the_rotation_before_any_record_moves(
        own_redis, redis, settings):
    # Material from an environment that was not updated on this replica.
    material = material_of(settings)
    stale_environ = {
        "NEUROAPI_PEPPERS": "1:" + base64.urlsafe_b64encode(material.peppers[1]).decode(),
        "NEUROAPI_ENVELOPE_KEYS": "1:" + material.envelope_keys[1].decode(),
    }
    stale = ReplicaKeyMaterial(lambda: material_of(settings, stale_environ))
    stale.listen(own_redis.url)
    await until(lambda: stale.listening)
    try:
        await mint(redis, KeyCrypto(material), 3)
        before = await records(redis)
        with pytest.raises(ReplicasNotReady) as error:
            await rotate(redis, settings, "pepper", environ={}, reload_timeout_s=1.0)
        assert "no record was changed" in str(error.value) and "--resume" in str(error.value)
        assert await records(redis) == before
    finally:
        await stale.stop()


async def test_environment_material_is_migrated_to_its_newest_version_without_writing_a_file(redis, settings):
    material = material_of(settings)
    add_key_version(settings.secrets_file, "envelope")
    rotated = material_of(settings)
    file_before = settings.secrets_file.read_text()
    environ = {
        "NEUROAPI_PEPPERS": ",".join(f"{v}:{base64.urlsafe_b64encode(k).decode()}"
                                     for v, k in material.peppers.items()),
        "NEUROAPI_ENVELOPE_KEYS": ",".join(f"{v}:{k.decode()}" for v, k in rotated.envelope_keys.items()),
    }
    await mint(redis, KeyCrypto(material), 4)
    report = await rotate(redis, settings, "envelope", environ=environ)
    assert (report.version, report.added_to, report.migration.migrated) == (2, None, 4)
    assert settings.secrets_file.read_text() == file_before


async def test_a_record_that_does_not_open_or_match_is_left_and_reported(redis, settings):
    crypto = KeyCrypto(material_of(settings))
    _, keys = await mint(redis, crypto, 3)
    first, second = (key_record_key(k.rsplit("_", 1)[0]) for k in keys[:2])
    # A ciphertext swapped in from another record must not become this record's key.
    await redis.hset(first, "ciphertext", await redis.hget(second, "ciphertext"))
    add_key_version(settings.secrets_file, "pepper")
    result = await migrate(redis, KeyCrypto(material_of(settings)), "pepper")
    assert (result.migrated, result.left) == (2, 1)
    assert (await redis.hget(first, "pepper_version")) == "1"


async def test_a_verifier_reloads_once_for_a_pepper_version_it_does_not_know(redis, settings):
    replica = ReplicaKeyMaterial(lambda: material_of(settings))  # not listening: it missed the news
    add_key_version(settings.secrets_file, "pepper")
    account, keys = await mint(redis, KeyCrypto(material_of(settings)), 1)
    assert not replica.crypto.knows_pepper(2)
    verified = await KeyStore(redis, replica.crypto).verify(keys[0])
    assert verified is not None and verified.account_id == account.id
    assert replica.crypto.knows_pepper(2)


async def test_two_rotations_at_once_converge_on_the_newest_version(redis, settings):
    _, keys = await mint(redis, KeyCrypto(material_of(settings)), 40)
    add_key_version(settings.secrets_file, "pepper")
    second = KeyCrypto(material_of(settings))
    add_key_version(settings.secrets_file, "pepper")
    third = KeyCrypto(material_of(settings))
    # One writes v2 while the other writes v3: compare-and-set loses no write and never downgrades.
    await asyncio.gather(migrate(redis, second, "pepper"), migrate(redis, third, "pepper"))
    assert {r["pepper_version"] for r in (await records(redis)).values()} == {"3"}
    assert all([await KeyStore(redis, third).verify(key) for key in keys])
