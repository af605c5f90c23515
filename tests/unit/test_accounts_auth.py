"""Passwords, session tokens, the failed-auth throttle and the account service, against a real
redis-server of this module's own."""

import asyncio
import base64
import json
import statistics
import time

import pytest
import redis.asyncio as aioredis

from actors.accounts.passwords import MAX_LENGTH, PasswordError, hash_password, verify_password
from actors.accounts.service import AccountService
from actors.accounts.sessions import SessionTokens
from actors.accounts.store import AccountExists
from actors.accounts.throttle import FailedAuthThrottle, failures_key
from serve_app.callers.client_address import client_address, parse_networks
from tests.support.key_material import material

# ---- passwords -------------------------------------------------------------------------------

def test_passwords_have_length_limits():
    with pytest.raises(PasswordError, match="at least"):
        hash_password("short", rounds=4)
    with pytest.raises(PasswordError, match="at most"):
        hash_password("x" * (MAX_LENGTH + 1), rounds=4)


def test_every_character_of_a_long_password_counts_beyond_bcrypts_72_bytes():
    long = "correct horse battery staple " * 5  # 145 bytes
    hashed = hash_password(long, rounds=4)
    assert hashed.startswith("$2b$04$")
    assert verify_password(long, hashed, rounds=4)
    assert not verify_password(long[:-1] + "X", hashed, rounds=4)  # differs only past byte 72
    assert not verify_password(long[:72], hashed, rounds=4)


def test_multibyte_passwords_near_the_limit_work():
    password = "пароль-" * 12  # 13 bytes per repeat: 156 bytes
    assert verify_password(password, hash_password(password, rounds=4), rounds=4)


def test_an_unknown_account_costs_the_same_bcrypt_work_as_a_wrong_password():
    hashed = hash_password("the right password", rounds=8)

    def timed(stored):
        started = time.perf_counter()
        assert not verify_password("a wrong password", stored, rounds=8)
        return time.perf_counter() - started

    timed(None)  # builds the decoy once
    wrong = statistics.median(timed(hashed) for _ in range(5))
    unknown = statistics.median(timed(None) for _ in range(5))
    # A missing hash that skipped bcrypt would take microseconds, not the same order of time.
    assert unknown > wrong / 3


# ---- session tokens -----------------------------------------------------------------------

def test_a_session_token_checks_only_with_its_signature_and_before_expiry():
    tokens = SessionTokens(material().peppers)
    token, session = tokens.mint("acct_1", ttl_s=60)
    assert token.startswith("nsess_")
    assert tokens.check(token) == session
    payload, signature = token[len("nsess_"):].split(".")
    forged_fields = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged_fields["a"] = "acct_2"
    forged = base64.urlsafe_b64encode(json.dumps(forged_fields).encode()).rstrip(b"=").decode()
    assert tokens.check(f"nsess_{forged}.{signature}") is None
    assert tokens.check(token[:-2] + "AA") is None
    assert SessionTokens(material().peppers).check(token) is None  # other key material
    expired, _ = tokens.mint("acct_1", ttl_s=-1)
    assert tokens.check(expired) is None
    assert tokens.check("neuro_abcdefgh_x") is None


# ---- client address ------------------------------------------------------------------------

def test_x_forwarded_for_is_believed_only_from_trusted_proxies():
    trusted = parse_networks(["10.0.0.0/8", "127.0.0.1/32"])
    assert client_address("203.0.113.9", "198.51.100.1", trusted) == "203.0.113.9"  # untrusted peer
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", "198.51.100.1", trusted) == "198.51.100.1"
    # The client wrote the leftmost entry itself: only the hop our trusted proxies saw counts.
    assert client_address("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3", trusted) == "198.51.100.1"
    assert client_address("127.0.0.1", "10.0.0.1", trusted) == "10.0.0.1"  # all trusted: the farthest
    assert client_address("127.0.0.1", "198.51.100.1", []) == "127.0.0.1"


# ---- throttle ------------------------------------------------------------------------------

async def test_the_twenty_first_failure_in_a_window_is_blocked_until_the_window_allows(redis):
    throttle = FailedAuthThrottle(redis, limit=20, window_s=2.0)
    address = "198.51.100.7"
    verdicts = [await throttle.record_failure(address) for _ in range(20)]
    assert [v.blocked_for_s > 0 for v in verdicts] == [False] * 19 + [True]
    assert all(v.counted for v in verdicts)
    refused = await throttle.record_failure(address)
    assert not refused.counted and 0 < refused.blocked_for_s <= 2.0 and refused.retry_after == "2"
    assert await throttle.blocked_for("198.51.100.8") == 0  # another address is unaffected
    await asyncio.sleep(refused.blocked_for_s + 0.05)
    assert await throttle.blocked_for(address) == 0
    again = await throttle.record_failure(address)
    assert again.counted and again.failures == 1
    assert 0 < await redis.pttl(failures_key(address)) <= 2000  # nothing outlives its window


async def test_failures_are_counted_across_processes_sharing_redis(redis, own_redis):
    other = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    one, two = FailedAuthThrottle(redis, limit=4, window_s=60), FailedAuthThrottle(other, limit=4, window_s=60)
    for throttle in (one, two, one, two):
        await throttle.record_failure("192.0.2.44")
    assert await one.blocked_for("192.0.2.44") > 59
    await other.aclose()


# ---- the account service -------------------------------------------------------------------

@pytest.fixture
def service(redis):
    key_material = material()
    return AccountService(redis, lambda: key_material, password_rounds=4, session_ttl_s=60)


async def test_sign_up_log_in_manage_keys_and_log_out(service, redis):
    account = await service.signup(" Bob@Example.com ", "a long enough password")
    with pytest.raises(AccountExists):
        await service.signup("bob@example.com", "another long password")
    assert await service.login("bob@example.com", "wrong password!") is None
    assert await service.login("nobody@example.com", "a long enough password") is None
    token, session = await service.login("BOB@example.com", "a long enough password")
    assert (await service.session(token)).account_id == account.id
    plaintext, info = await service.create_key(account.id, "laptop")
    assert plaintext.startswith(info.prefix + "_")
    await service.record_key_uses({info.prefix: 1_800_000_000})
    [listed] = await service.list_keys(account.id)
    assert (listed.prefix, listed.name, listed.status, listed.last_used_at) == (info.prefix, "laptop", "active",
                                                                                1_800_000_000)
    assert not await service.revoke_key("acct_someone_else", info.prefix)
    assert await service.revoke_key(account.id, info.prefix)
    assert [k.status for k in await service.list_keys(account.id)] == ["revoked"]
    assert await service.logout(token)
    assert await service.session(token) is None
    stored = await redis.hgetall(f"neuroapi:account:{account.id}")
    assert stored["password_hash"].startswith("$2b$") and "a long enough password" not in json.dumps(stored)


async def test_uses_of_unknown_keys_create_nothing(service, redis):
    await service.record_key_uses({"neuro_zzzzzzzz": 1_800_000_000})
    assert not await redis.exists("neuroapi:key:neuro_zzzzzzzz")
