"""Scope administration (actors.routing.scope_service) on a real redis-server, and its two
callers as an operator meets them: the router's answers for the admin API (GatewayError values)
and the ``neuroapi accounts scope`` command (its lines and exit codes)."""

from __future__ import annotations

import functools
import json

import pytest

from actors.accounts.store import AccountError
from actors.routing import scopes
from actors.routing.router import ModeRouter
from actors.routing.scope_service import ScopeService
from config.settings import load_settings
from core import logs
from core.audit import AUDIT_STREAM
from core.errors import GatewayError
from core.invalidation import CHANNEL, InvalidationTimeout, broadcast
from core.naming import IN_HOUSE_PROVIDER
from core.scope import UNRESTRICTED, Scope, ScopeError
from tests.support.key_material import account_store
from tests.support.listeners import listening

THIRD_PARTIES = {"openai", "anthropic", "deepseek"}
NO_OPENAI = Scope(excluded_providers=frozenset({"openai"}))


async def audited(redis, account_id: str) -> list[dict]:
    return [fields for _, fields in await redis.xrange(AUDIT_STREAM) if fields.get("account_id") == account_id]


@pytest.fixture
def short_broadcasts(monkeypatch):
    """A replica that never confirms times the change out in half a second, not ten."""
    monkeypatch.setattr(scopes, "broadcast", functools.partial(broadcast, timeout_s=0.5))


async def silent_replica(redis):
    """Receives every invalidation and confirms none."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    return pubsub


async def test_operators_find_the_account_by_its_email_however_it_is_typed(redis):
    # Operators name an account by email; the id comes from where the key material is (the
    # verifier pool, the CLI), since the email index is keyed (actors.accounts.sealing).
    account = await account_store(redis).create("Ops@Example.com")
    accounts = account_store(redis)
    assert await accounts.id_of("ops@example.com") == account.id
    assert await accounts.id_of("  OPS@example.COM ") == account.id
    assert await ScopeService(redis, THIRD_PARTIES).lookup(account.id) == (account.id, UNRESTRICTED)


async def test_lookup_of_an_unknown_account_or_malformed_email_is_an_account_error(redis):
    service = ScopeService(redis, THIRD_PARTIES)
    with pytest.raises(AccountError, match="no such account"):
        await service.lookup("acct_0000000000000000")
    with pytest.raises(AccountError, match="no account with this email"):
        await account_store(redis).id_of("nobody@example.com")
    with pytest.raises(AccountError, match="not a valid email address"):
        await account_store(redis).id_of("not-an-email")


async def test_set_stores_audits_and_waits_for_every_replica(redis, own_redis):
    account = await account_store(redis).create("a@example.com")
    service = ScopeService(redis, THIRD_PARTIES)
    heard: list[tuple[str, str]] = []
    async with listening(own_redis.url, lambda topic, subject: heard.append((topic, subject))):
        assert await service.set(account.id, NO_OPENAI, "admin:alice") == (account.id, 1)
        assert heard == [("account", account.id)]  # confirmed before set returned
    assert await service.lookup(account.id) == (account.id, NO_OPENAI)
    [entry] = await audited(redis, account.id)
    assert (entry["actor"], entry["action"]) == ("admin:alice", "scope.set")
    assert json.loads(entry["before"]) == {"in_house_only": False, "excluded_providers": []}
    assert json.loads(entry["after"]) == {"in_house_only": False, "excluded_providers": ["openai"]}


async def test_a_provider_the_caller_does_not_know_is_refused_and_nothing_changes(redis):
    account = await account_store(redis).create("b@example.com")
    service = ScopeService(redis, THIRD_PARTIES)
    with pytest.raises(ScopeError, match=r"unknown provider\(s\): nope \(known: anthropic, deepseek, openai\)"):
        await service.set(account.id, Scope(excluded_providers=frozenset({"nope", "openai"})), "cli:bob")
    assert await service.lookup(account.id) == (account.id, UNRESTRICTED)
    assert await audited(redis, account.id) == []
    # The known names are the caller's: the in-house provider only where it is counted.
    with pytest.raises(ScopeError):
        await service.set(account.id, Scope(excluded_providers=frozenset({IN_HOUSE_PROVIDER})), "cli:bob")
    with_in_house = ScopeService(redis, THIRD_PARTIES | {IN_HOUSE_PROVIDER})
    assert (await with_in_house.set(account.id, Scope(excluded_providers=frozenset({IN_HOUSE_PROVIDER})),
                                    "admin:alice"))[0] == account.id


async def test_an_unknown_account_is_reported_before_a_bad_scope(redis):
    service = ScopeService(redis, THIRD_PARTIES)
    with pytest.raises(AccountError, match="no such account"):
        await service.set("acct_0000000000000000", Scope(excluded_providers=frozenset({"nope"})), "cli:bob")


async def test_a_replica_that_does_not_confirm_times_out_after_the_change_is_stored(redis, short_broadcasts):
    account = await account_store(redis).create("c@example.com")
    service = ScopeService(redis, THIRD_PARTIES)
    replica = await silent_replica(redis)
    try:
        with pytest.raises(InvalidationTimeout):
            await service.set(account.id, Scope(in_house_only=True), "admin:alice")
    finally:
        await replica.aclose()
    # Stored and audited: sending the same change again is what the caller is told to do.
    assert await service.lookup(account.id) == (account.id, Scope(in_house_only=True))
    assert len(await audited(redis, account.id)) == 1


@pytest.fixture
async def router(own_redis, monkeypatch):
    """The router deployment's class as Serve would construct it, minus its replica logging."""
    monkeypatch.setattr(logs, "install", lambda **_: None)
    return ModeRouter(load_settings(environ={}), sorted(THIRD_PARTIES), own_redis.url)


async def test_the_router_answers_scopes_and_maps_each_error_as_the_admin_api_shows_it(redis, router,
                                                                                     short_broadcasts):
    account = await account_store(redis).create("d@example.com")
    assert await router.scope(account.id) == (account.id, UNRESTRICTED)
    assert await router.set_scope(account.id, Scope(excluded_providers=frozenset({IN_HOUSE_PROVIDER})),
                                  "admin:alice") == (account.id, 0)  # in-house counts: it serves in house

    def shown(error: GatewayError) -> tuple:
        return error.status, error.type, error.code, error.param, error.message

    missing = await router.scope("acct_0000000000000000")
    assert shown(missing) == (404, "invalid_request_error", "account_not_found", "email", "no such account.")
    missing = await router.set_scope("acct_0000000000000000", NO_OPENAI, "admin:alice")
    assert shown(missing) == (404, "invalid_request_error", "account_not_found", "email", "no such account.")
    unknown = await router.set_scope(account.id, Scope(excluded_providers=frozenset({"nope"})), "admin:alice")
    assert shown(unknown) == (400, "invalid_request_error", "invalid_value", "excluded_providers",
                              "Invalid scope: unknown provider(s): nope (known: anthropic, deepseek, inhouse, openai).")
    replica = await silent_replica(redis)
    try:
        late = await router.set_scope(account.id, NO_OPENAI, "admin:alice")
    finally:
        await replica.aclose()
    assert shown(late) == (503, "server_error", "not_confirmed", None, "The scope is stored, but not every replica "
                           "confirmed it in time; send the same change again.")



def test_the_cli_shows_sets_and_clears_a_scope(neuroapi):
    assert neuroapi("accounts", "create", "ops@example.com")[0] == 0
    assert neuroapi("accounts", "scope", "OPS@example.com") == (0, "ops@example.com\tin_house_only=no\texcluded=-\n", "")
    code, out, err = neuroapi("accounts", "scope", "ops@example.com", "--exclude-provider", "openai",
                              "--exclude-provider", "anthropic")
    assert (code, out) == (0, "ops@example.com\tin_house_only=no\texcluded=anthropic,openai\n")
    assert err == "scope of ops@example.com set; 0 gateway replica(s) confirmed\n"
    code, out, _ = neuroapi("accounts", "scope", "ops@example.com", "--in-house-only")
    assert (code, out) == (0, "ops@example.com\tin_house_only=yes\texcluded=-\n")
    code, out, _ = neuroapi("accounts", "scope", "ops@example.com", "--clear")
    assert (code, out) == (0, "ops@example.com\tin_house_only=no\texcluded=-\n")


def test_cli_scope_errors_are_one_line_and_exit_2(neuroapi):
    assert neuroapi("accounts", "scope", "nobody@example.com", "--clear", "--in-house-only") == (
        2, "", "neuroapi: no account with this email\n")  # the account is checked first
    assert neuroapi("accounts", "create", "ops@example.com")[0] == 0
    assert neuroapi("accounts", "scope", "ops@example.com", "--clear", "--in-house-only") == (
        2, "", "neuroapi: --clear takes no other option\n")
    # The CLI knows the configured third parties only (the router also counts the in-house one).
    assert neuroapi("accounts", "scope", "ops@example.com", "--exclude-provider", IN_HOUSE_PROVIDER) == (
        2, "", "neuroapi: unknown provider(s): inhouse (known: anthropic, deepseek, openai)\n")
    assert neuroapi("accounts", "scope", "ops@example.com") == (0, "ops@example.com\tin_house_only=no\texcluded=-\n", "")
