"""Abuse without a key, as plain Python against a real redis-server of this module's own:
per-source buckets that never carry caller text into Redis, blocks that do not stop a proven
key, the sign-up limit, bounded bcrypt work, e-mails with control characters, and the admin
token's minimum length."""

import asyncio
import threading

import pytest

from actors.accounts import service as account_service_module
from actors.accounts.service import AccountService
from actors.accounts.store import AccountError, normalise_email
from actors.accounts.throttle import NOT_AN_IP, FailedAuthThrottle, SignupThrottle, source_bucket
from actors.accounts.work_budget import Busy, WorkBudget
from core.errors import GatewayError
from serve_app.callers import guard as auth_guard
from serve_app.callers.admin_token import MIN_LENGTH, read_admin_token
from serve_app.callers.client_address import parse_networks
from serve_app.callers.guard import FailedAuthGuard
from tests.support.key_material import material

HOSTILE_SOURCES = ["not an ip {}[]", "x" * 7000, "127.0.0.1 ", "::ffff:zz", "", "1.2.3.4:80", "neuroapi:*"]


def test_a_source_is_its_canonical_ip_and_anything_else_is_one_bucket():
    assert source_bucket("2001:DB8::0a1b:0001") == "2001:db8::a1b:1"
    assert source_bucket("192.0.2.7") == "192.0.2.7"
    assert source_bucket(None) == NOT_AN_IP
    for hostile in HOSTILE_SOURCES:
        assert source_bucket(hostile) in (NOT_AN_IP, "127.0.0.1")


async def test_no_caller_text_reaches_a_redis_key_name(redis):
    throttle = FailedAuthThrottle(redis, limit=100, window_s=60)
    for hostile in HOSTILE_SOURCES:
        await throttle.record_failure(hostile)
    await throttle.record_failure("2001:DB8::0001")
    await SignupThrottle(redis, limit=100, window_s=60).admit("not an ip {}[]")
    assert sorted(await redis.keys("*")) == [
        "neuroapi:auth-failures:127.0.0.1", "neuroapi:auth-failures:2001:db8::1",
        f"neuroapi:auth-failures:{NOT_AN_IP}", f"neuroapi:signups:{NOT_AN_IP}"]


# ---- the ingress's guard ---------------------------------------------------------------------

def guard(redis, limit=3) -> FailedAuthGuard:
    return FailedAuthGuard(redis, parse_networks(["127.0.0.1/32"]), limit=limit, window_s=60)


async def test_a_blocked_address_is_known_locally_and_others_are_not_blocked(redis):
    one = guard(redis)
    address = one.address("127.0.0.1", "2001:DB8::0007")  # the trusted hop vouches for it
    assert address == "2001:db8::7"
    error = GatewayError(401, "no", code="invalid_api_key")
    answers = [await one.failed(address, error) for _ in range(4)]
    assert [a.status for a in answers] == [401, 401, 401, 429]  # the limit's own attempt keeps its 401
    assert 59 < one.blocked_for(address) <= 60
    assert one.blocked_for("2001:db8::8") == 0
    with pytest.raises(GatewayError) as refused:
        one.source("127.0.0.1", "2001:db8::7")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "60"
    assert one.source("127.0.0.1", "2001:db8::8") == "2001:db8::8"


async def test_announced_blocks_are_checked_and_the_local_map_is_bounded(redis, monkeypatch):
    one = guard(redis)
    for malformed in ("", "1.2.3.4", "1.2.3.4 soon", "1.2.3.4 -5", "1.2.3.4 inf", "1.2.3.4 nan"):
        one.block(malformed)
    assert one.blocked_for("1.2.3.4") == 0
    one.block("not an ip 30")  # a bucket, never the text
    assert one.blocked_for(NOT_AN_IP) > 29
    monkeypatch.setattr(auth_guard, "MAX_LOCAL_BLOCKS", 5)
    for n in range(50):
        one.block(f"192.0.2.{n} 30")
    assert [one.blocked_for(f"192.0.2.{n}") > 0 for n in range(44, 50)] == [False] + [True] * 5
    assert len(one._blocked_until) == 5


async def test_sign_ups_are_limited_per_address_across_processes(redis):
    one, two = SignupThrottle(redis, limit=3, window_s=60), SignupThrottle(redis, limit=3, window_s=60)
    verdicts = [await throttle.admit("198.51.100.9") for throttle in (one, two, one, two)]
    assert [v.counted for v in verdicts] == [True, True, True, False]
    assert verdicts[-1].retry_after == "60"
    assert (await one.admit("198.51.100.10")).counted  # another address is unaffected


# ---- bounded bcrypt work ---------------------------------------------------------------------

async def test_a_work_budget_runs_and_queues_at_most_its_capacity():
    release = threading.Event()
    budget = WorkBudget("test", running=1, waiting=2)
    started = [asyncio.create_task(budget.run(release.wait, 10)) for _ in range(3)]
    await asyncio.sleep(0.05)
    with pytest.raises(Busy):
        await budget.run(release.wait, 10)
    started[2].cancel()  # a caller that stops waiting frees its place once its work is dropped
    await asyncio.sleep(0.05)
    assert budget.in_flight == 2
    release.set()
    assert await asyncio.gather(*started[:2]) == [True, True]
    await asyncio.sleep(0.05)
    assert budget.in_flight == 0
    assert await budget.run(lambda: 42) == 42
    budget.close()


@pytest.fixture
def service(redis):
    key_material = material()
    return AccountService(redis, lambda: key_material, password_rounds=4, session_ttl_s=60)


async def test_a_sign_up_flood_is_refused_past_its_budget_and_never_delays_a_log_in(service, monkeypatch):
    await service.signup("early@example.com", "a long enough password")
    release = threading.Event()
    real_hash = account_service_module.hash_password

    def stuck_hash(password, rounds):  # a sign-up's bcrypt that takes as long as the test wants
        release.wait(10)
        return real_hash(password, rounds)

    monkeypatch.setattr(account_service_module, "hash_password", stuck_hash)
    capacity = account_service_module.SIGNUP_HASHING + account_service_module.SIGNUP_WAITING
    flood = [asyncio.create_task(service.signup(f"flood{n}@example.com", "a long enough password"))
             for n in range(capacity)]
    await asyncio.sleep(0.05)
    with pytest.raises(Busy):
        await service.signup("one-more@example.com", "a long enough password")
    # A log-in hashes on its own threads: it completes while every sign-up slot is stuck.
    token, _ = await asyncio.wait_for(service.login("early@example.com", "a long enough password"), 5)
    assert await service.session(token) is not None
    assert not any(task.done() for task in flood)
    # A bad address or password is refused before any hashing, so it costs no slot.
    with pytest.raises(AccountError):
        await service.signup("nul\x00@example.com", "a long enough password")
    release.set()
    assert len(await asyncio.gather(*flood)) == capacity


def test_an_email_with_a_control_or_format_character_is_invalid():
    for bad in ("a\x00b@example.com", "ab@example.com\x00", "a\x1b[31m@example.com", "a\x7f@example.com",
                "a\u202eb@example.com", "a\u200bb@example.com"):
        with pytest.raises(AccountError):
            normalise_email(bad)
    assert normalise_email(" José@Example.com ") == "josé@example.com"


# ---- the admin token -------------------------------------------------------------------------

def test_an_admin_token_shorter_than_the_minimum_leaves_the_admin_api_off():
    assert not read_admin_token({}).on
    short = read_admin_token({"NEUROAPI_ADMIN_TOKEN": "x" * (MIN_LENGTH - 1)})
    assert not short.on and short.value == b"" and "shorter than 32" in short.off_because
    assert read_admin_token({"NEUROAPI_ADMIN_TOKEN": "x" * MIN_LENGTH}).value == b"x" * MIN_LENGTH


def test_neuroapi_serve_refuses_a_short_admin_token_before_starting_anything(monkeypatch, tmp_path, capsys):
    from serve_app import cli, runtime

    monkeypatch.setenv("NEUROAPI_ADMIN_TOKEN", "secret")
    monkeypatch.setenv("NEUROAPI_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "start_gateway", lambda *a, **k: pytest.fail("the gateway started"))
    assert cli.main(["serve"]) == 2
    assert "NEUROAPI_ADMIN_TOKEN is shorter than 32 characters" in capsys.readouterr().err
    assert not (tmp_path / "secrets.json").exists()  # refused before anything was made


async def test_a_budget_can_run_its_work_at_the_lowest_cpu_priority():
    import os

    budget = WorkBudget("low", running=1, waiting=0, nice=19)
    assert await budget.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())) == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 19  # this thread is untouched
    budget.close()
