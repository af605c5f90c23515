"""Where a key's limits live and how they change (actors.keys.limit_records, limit_settings), on
a real redis-server: the verify round trip carries them, owners stay under the operator's
ceiling, every change is audited and reaches the ingress key caches before it returns."""

from __future__ import annotations

import json
import time

import pytest

from actors.keys.crypto import KeyCrypto
from actors.keys.limit_records import CeilingExceeded, changed, decode, effective, encode
from actors.keys.limit_settings import LimitSettings
from actors.keys.store import KeyStore, key_record_key
from actors.accounts.store import AccountError
from core.audit import AUDIT_STREAM
from core.limits import Limits, LimitsError
from serve_app.callers.key_cache import VerifiedKeyCache, fingerprint
from tests.support.key_material import account_store, material
from tests.support.listeners import listening

MICRO = 1_000_000


@pytest.fixture
def keys(redis):
    return KeyStore(redis, KeyCrypto(material()))


async def new_key(redis, keys):
    import secrets
    account = await account_store(redis).create(f"user-{secrets.token_hex(4)}@example.com")
    plaintext, info = await keys.create(account.id, "ci")
    return account.id, plaintext, info.prefix


async def audited(redis, action: str) -> list[dict]:
    return [fields for _, fields in await redis.xrange(AUDIT_STREAM) if fields["action"] == action]


def ingress_cache_handler(cache: VerifiedKeyCache):
    """What serve_app.gateway._invalidate does with the two topics these changes use."""
    def handle(topic: str, subject: str) -> None:
        if topic == "key":
            cache.invalidate(subject)
        elif topic == "account":
            cache.invalidate_account(subject)
    return handle


def test_the_record_form_round_trips_and_keeps_only_what_is_set():
    limits = Limits(rpm=60, tpm=10_000, key_budget_micro=12_500_000, models=frozenset({"private", "ft:mine"}))
    assert decode(encode(limits)) == limits
    assert encode(Limits()) == "" and decode("") == Limits() and decode(None) == Limits()
    assert json.loads(encode(Limits(rpm=5))) == {"rpm": 5}


async def test_verify_carries_the_keys_limits_and_its_accounts_budget(redis, keys):
    account_id, plaintext, prefix = await new_key(redis, keys)
    assert (await keys.verify(plaintext)).limits == Limits()  # none set: nothing to count
    settings = LimitSettings(redis)
    await settings.update_ceiling(prefix, {"rpm": 100, "monthly_budget_cost_units": "20"}, "cli:ops")
    await settings.update_own(account_id, prefix, {"rpm": 30, "models": ["private"]}, "session:owner")
    await settings.set_account_budget(account_id, 50 * MICRO, "cli:ops")
    verified = await keys.verify(plaintext)
    assert verified.limits == Limits(rpm=30, key_budget_micro=20 * MICRO, account_budget_micro=50 * MICRO,
                                     models=frozenset({"private"}))
    assert verified.limits.counted() and not verified.limits.allows_model("gpt-4o")
    [info] = await keys.list(account_id)
    assert info.limits == verified.limits
    assert info.ceiling == Limits(rpm=100, key_budget_micro=20 * MICRO)


async def test_budgets_are_exact_cost_units_text_and_bad_values_change_nothing(redis, keys):
    account_id, plaintext, prefix = await new_key(redis, keys)
    settings = LimitSettings(redis)
    now, _ = await settings.update_ceiling(prefix, {"monthly_budget_cost_units": "0.000001"}, "cli:ops")
    assert now.ceiling.key_budget_micro == 1
    assert now.effective.as_dict()["monthly_budget_cost_units"] == "0.000001"
    for bad in ({"rpm": 0}, {"rpm": -5}, {"tpm": 1.5}, {"rpm": True}, {"monthly_budget_cost_units": 1.5},
                {"monthly_budget_cost_units": "0.0000001"}, {"monthly_budget_cost_units": "-1"},
                {"models": []}, {"models": "private"}, {"models": ["bad name"]}, {"models": ["ft:"]},
                {"models": [f"m{i}" for i in range(65)]}, {"burst": 5}):
        with pytest.raises(LimitsError):
            await settings.update_own(account_id, prefix, bad, "session:owner")
    assert (await settings.key_limits(prefix)).own == Limits()
    # Any well-formed name is accepted: the verifier pool does not hold the catalog.
    assert changed(Limits(), {"models": ["ft:support-bot", "meta-llama/Llama-3.1-8B"]}).models == frozenset(
        {"ft:support-bot", "meta-llama/Llama-3.1-8B"})
    assert len(changed(Limits(), {"models": [f"m{i}" for i in range(64)]}).models) == 64


async def test_an_owner_cannot_go_above_the_operators_ceiling(redis, keys):
    account_id, plaintext, prefix = await new_key(redis, keys)
    settings = LimitSettings(redis)
    await settings.update_ceiling(prefix, {"rpm": 100, "tpm": 5000, "monthly_budget_cost_units": 10,
                                           "models": ["private", "gpt-4o"]}, "cli:ops")
    for above in ({"rpm": 101}, {"tpm": 5001}, {"monthly_budget_cost_units": "10.000001"},
                  {"models": ["private", "claude-3-5-haiku-latest"]}):
        with pytest.raises(CeilingExceeded):
            await settings.update_own(account_id, prefix, above, "session:owner")
    now, _ = await settings.update_own(account_id, prefix, {"rpm": 100, "models": ["gpt-4o"]}, "session:owner")
    assert (now.effective.rpm, now.effective.tpm, now.effective.models) == (100, 5000, frozenset({"gpt-4o"}))
    # Clearing the owner's own value leaves the operator's in force, never no limit.
    now, _ = await settings.update_own(account_id, prefix, {"rpm": None, "models": None}, "session:owner")
    assert (now.own, now.effective.rpm, now.effective.models) == (Limits(), 100, frozenset({"private", "gpt-4o"}))
    # An operator lowering the ceiling below an owner's value wins at once.
    await settings.update_own(account_id, prefix, {"tpm": 4000}, "session:owner")
    await settings.update_ceiling(prefix, {"tpm": 1000}, "cli:ops")
    assert (await keys.verify(plaintext)).limits.tpm == 1000


async def test_an_owner_cannot_touch_another_accounts_key(redis, keys):
    _, _, prefix = await new_key(redis, keys)
    other, _, _ = await new_key(redis, keys)
    settings = LimitSettings(redis)
    with pytest.raises(LookupError):
        await settings.update_own(other, prefix, {"rpm": 1}, "session:other")
    with pytest.raises(LookupError):
        await settings.update_own(other, "neuro_zzzzzzzz", {"rpm": 1}, "session:other")
    assert (await settings.key_limits(prefix)).own == Limits()
    assert await audited(redis, "key.limits.owner") == []


def test_the_tighter_of_owner_and_operator_holds():
    own = Limits(rpm=10, tpm=None, key_budget_micro=7, models=frozenset({"a", "b"}))
    ceiling = Limits(rpm=20, tpm=300, key_budget_micro=5, models=frozenset({"b", "c"}))
    assert effective(own, ceiling, 9) == Limits(rpm=10, tpm=300, key_budget_micro=5, account_budget_micro=9,
                                                models=frozenset({"b"}))
    # Disjoint lists (the operator narrowed after the owner chose): the operator's list holds.
    assert effective(Limits(models=frozenset({"a"})), Limits(models=frozenset({"c"}))).models == frozenset({"c"})


async def test_a_change_reaches_every_ingress_cache_before_it_returns_and_is_audited(own_redis, redis, keys):
    account_id, plaintext, prefix = await new_key(redis, keys)
    settings = LimitSettings(redis)
    caches = [VerifiedKeyCache(), VerifiedKeyCache()]
    async with listening(own_redis.url, *(ingress_cache_handler(c) for c in caches)):
        for cache in caches:
            cache.put(fingerprint(plaintext), await keys.verify(plaintext), cache.generation)
        now, confirmed = await settings.update_ceiling(prefix, {"rpm": 7}, "admin:alice")
        assert confirmed == 2
        assert all(c.get(prefix, fingerprint(plaintext)) is None for c in caches)  # dropped: verified anew
        assert (await keys.verify(plaintext)).limits.rpm == 7

        for cache in caches:
            cache.put(fingerprint(plaintext), await keys.verify(plaintext), cache.generation)
        assert await settings.set_account_budget(account_id, 3 * MICRO, "cli:ops") == 2
        assert all(c.get(prefix, fingerprint(plaintext)) is None for c in caches)
        assert (await keys.verify(plaintext)).limits.account_budget_micro == 3 * MICRO
    [entry] = await audited(redis, "key.limits")
    assert (entry["actor"], entry["prefix"], entry["account_id"], entry["layer"]) == (
        "admin:alice", prefix, account_id, "operator")
    assert json.loads(entry["after"])["rpm"] == 7
    assert plaintext.split("_")[2] not in json.dumps(entry)
    [budget] = await audited(redis, "account.budget")
    assert (budget["actor"], budget["account_id"], budget["after"]) == ("cli:ops", account_id, "3")


async def test_clearing_removes_the_fields_and_unknown_things_are_refused(redis, keys):
    account_id, plaintext, prefix = await new_key(redis, keys)
    settings = LimitSettings(redis)
    await settings.update_ceiling(prefix, {"rpm": 5, "models": ["private"]}, "cli:ops")
    await settings.set_account_budget(account_id, 1, "cli:ops")
    await settings.update_ceiling(prefix, {}, "cli:ops", clear=True)
    await settings.set_account_budget(account_id, None, "cli:ops")
    assert (await keys.verify(plaintext)).limits == Limits()
    assert "limits_ceiling" not in await redis.hgetall(key_record_key(prefix))
    with pytest.raises(LookupError):
        await settings.key_limits("neuro_zzzzzzzz")
    with pytest.raises(LookupError):
        await settings.key_limits("not-a-prefix")
    with pytest.raises(AccountError):
        await settings.set_account_budget("acct_missing", 1, "cli:ops")



def test_the_cli_shows_sets_and_clears_a_keys_limits_and_an_accounts_budget(neuroapi, own_redis):
    assert neuroapi("accounts", "create", "ops@example.com")[0] == 0
    code, plaintext, _ = neuroapi("keys", "create", "ops@example.com")
    prefix = "_".join(plaintext.strip().split("_")[:2])
    none = "rpm=-\ttpm=-\tmonthly_budget_cost_units=-\taccount_monthly_budget_cost_units=-\tmodels=-"
    assert neuroapi("keys", "limits", prefix) == (0, f"{prefix}\toperator\t{none}\n{prefix}\tin_force\t{none}\n", "")
    code, out, err = neuroapi("keys", "limits", prefix, "--rpm", "60", "--budget", "12.5", "--models", "private,gpt-4o")
    assert (code, err) == (0, f"limits of {prefix} set; 0 gateway replica(s) confirmed\n")
    assert out.splitlines()[1] == (f"{prefix}\tin_force\trpm=60\ttpm=-\tmonthly_budget_cost_units=12.5\t"
                                   "account_monthly_budget_cost_units=-\tmodels=gpt-4o,private")
    code, out, _ = neuroapi("keys", "limits", prefix, "--tpm", "1000")  # the other fields are kept
    assert "rpm=60\ttpm=1000\tmonthly_budget_cost_units=12.5" in out.splitlines()[0]

    assert neuroapi("accounts", "budget", "OPS@example.com", "--monthly", "100.25") == (
        0, "ops@example.com\tmonthly_budget_cost_units=100.25\n",
        "monthly budget of ops@example.com set; 0 gateway replica(s) confirmed\n")
    assert "account_monthly_budget_cost_units=100.25" in neuroapi("keys", "limits", prefix)[1]
    assert neuroapi("accounts", "budget", "ops@example.com", "--clear")[1] == (
        "ops@example.com\tmonthly_budget_cost_units=-\n")
    assert neuroapi("keys", "limits", prefix, "--clear")[1] == f"{prefix}\toperator\t{none}\n{prefix}\tin_force\t{none}\n"
    with own_redis.client() as client:
        actions = [fields["action"] for _, fields in client.xrange(AUDIT_STREAM)]
    assert actions.count("key.limits") == 3 and actions.count("account.budget") == 2


def test_cli_limits_errors_are_one_line_and_exit_2(neuroapi):
    assert neuroapi("keys", "limits", "neuro_zzzzzzzz", "--rpm", "5") == (2, "", "neuroapi: no key with this prefix\n")
    assert neuroapi("accounts", "budget", "nobody@example.com", "--monthly", "5") == (
        2, "", "neuroapi: no account with this email\n")
    assert neuroapi("accounts", "create", "ops@example.com")[0] == 0
    code, plaintext, _ = neuroapi("keys", "create", "ops@example.com")
    prefix = "_".join(plaintext.strip().split("_")[:2])
    assert neuroapi("keys", "limits", prefix, "--rpm", "0") == (2, "", "neuroapi: rpm must be a positive whole number\n")
    assert neuroapi("keys", "limits", prefix, "--budget", "1.0000001") == (
        2, "", "neuroapi: monthly_budget_cost_units has more than six decimals\n")
    assert neuroapi("keys", "limits", prefix, "--clear", "--rpm", "5") == (
        2, "", "neuroapi: --clear takes no other option\n")
    assert neuroapi("accounts", "budget", "ops@example.com", "--monthly", "abc") == (
        2, "", "neuroapi: --monthly is not a number\n")


async def test_an_account_budget_set_mid_month_counts_what_the_account_already_spent(redis, keys):
    """The budget is monthly: a budget set on the 15th counts the spend of the 1st to the 14th."""
    from actors.limits.store import LimitStore, Refused
    from actors.metering.record import CallRecord, current_month
    from actors.metering.usage_store import UsageStore

    account_id, _, prefix = await new_key(redis, keys)
    now_ms = int(time.time() * 1000)
    spent = CallRecord("req-earlier", now_ms, prefix, account_id, 200, "", "openai", "gpt-4o-mini", 10, 10,
                       False, 1_500_000, 10, 10)
    await UsageStore(redis).write([spent])  # 1.5 cost_units metered before any budget
    await LimitSettings(redis).set_account_budget(account_id, 2_000_000, actor="test")
    store = LimitStore(redis)
    month = await store.spent(None, account_id)
    assert (month.month, month.account_spent_micro) == (current_month(now_ms), 1_500_000)
    limits = Limits(account_budget_micro=2_000_000)
    assert isinstance(await store.reserve(prefix, account_id, limits, 1, 600_000, "req-over"), Refused)
