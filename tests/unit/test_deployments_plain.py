"""The deployment classes as plain Python, without Ray (serve_app.app wraps them at build
time): the key verifier, the mode router, a provider proxy, the metering batcher and an in-house
model's fine-tune handshake, each against a real Redis of this module's own or the fake
upstream providers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from actors.accounts.sessions import Session
from actors.accounts.store import Account
from actors.keys.store import KeyInfo, VerifiedKey
from actors.billing.reporter_deployment import BillingReporter
from actors.billing.service import BillingService, VerifierBillingIds
from actors.billing.stripe_api import StripeBilling
from actors.keys.verifier import KeyVerifier
from actors.metering.batcher_deployment import MetadataBatcher
from actors.metering.record import current_month
from actors.metering.usage_store import CALLS_STREAM, UsageStore
from actors.providers.proxy import ProviderProxy
from actors.routing.router import ModeRouter
from config.settings import STRIPE_SECRET_VARIABLE, Settings, load_settings
from core.backend import Completion, LoraAdapter, StreamEnd, StreamStart, UpstreamCall, UpstreamFailure
from core.errors import GatewayError
from core.key_format import generate_key
from core.scope import UNRESTRICTED, Scope
from models.engine import EngineError
from models.model_server import ModelServer
from serve_app.runtime import free_port
from tests.conftest import key_material_environment
from tests.support.call_records import record
from tests.support.key_material import account_store
from tests.support.local_handle import LocalHandle
from tests.support.stripe_server import METERED_PRICE, SECRET_KEY, FakeStripe, sign_webhook, webhook_event
from tests.support.scripted_engine import HELLO, SPEC, ScriptedEngine, WordTokenizer
from tests.support.upstreams import CREDENTIALS

PASSWORD = "a long enough password"
WEBHOOK_SECRET = "whsec_unit_neuroapi_0123456789"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch) -> Settings:
    for name, value in key_material_environment().items():  # the verifier reads its keys from here
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NEUROAPI_SECRETS_FILE", raising=False)
    base = load_settings(environ={"NEUROAPI_DATA_DIR": str(tmp_path)})
    return base.model_copy(update={"password_rounds": 4})  # bcrypt's minimum: these tests log in


# ---- KeyVerifier -----------------------------------------------------------------------------

async def test_the_verifier_signs_up_logs_in_and_verifies_until_the_key_is_revoked(settings, own_redis, redis):
    verifier = KeyVerifier(settings, own_redis.url)  # inside the loop: it starts its rotation listener
    try:
        account = await verifier.signup("Dev@Example.com", PASSWORD)
        assert isinstance(account, Account) and account.email == "dev@example.com"

        assert await verifier.login("dev@example.com", "not the password") is None
        assert await verifier.login("nobody@example.com", PASSWORD) is None
        token, session = await verifier.login("dev@example.com", PASSWORD)
        assert isinstance(session, Session) and session.account_id == account.id
        assert await verifier.session(token) == session

        plaintext, info = await verifier.create_key(account.id, "ci")
        assert isinstance(info, KeyInfo) and plaintext.startswith(info.prefix) and info.status == "active"
        assert await verifier.verify(plaintext) == VerifiedKey(info.prefix, account.id, UNRESTRICTED)
        assert await verifier.verify(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
        assert await verifier.verify(generate_key()[0]) is None  # well-formed, never issued
        assert [k.prefix for k in await verifier.list_keys(account.id)] == [info.prefix]

        other = await verifier.signup("other@example.com", PASSWORD)
        assert await verifier.revoke_key(other.id, info.prefix) is False  # not its key
        assert await verifier.verify(plaintext) is not None
        assert await verifier.revoke_key(account.id, info.prefix) is True
        assert await verifier.verify(plaintext) is None
        assert (await verifier.list_keys(account.id))[0].status == "revoked"

        assert await verifier.logout(token) is True
        assert await verifier.session(token) is None
    finally:
        await verifier.close()  # what Serve awaits when the replica stops


async def test_the_verifier_answers_bad_sign_ups_with_error_values(settings, own_redis, redis):
    verifier = KeyVerifier(settings, own_redis.url)
    try:
        short = await verifier.signup("dev@example.com", "short")
        assert isinstance(short, GatewayError)  # a value for the ingress to raise, not an exception
        assert (short.status, short.code, short.param) == (400, "invalid_password", "password")
        assert await verifier.login("dev@example.com", "short") is None  # nothing was created

        assert isinstance(await verifier.signup("dev@example.com", PASSWORD), Account)
        again = await verifier.signup("DEV@example.com", PASSWORD)
        assert (again.status, again.code, again.param) == (409, "account_exists", "email")
        bad_email = await verifier.signup("not an email", PASSWORD)
        assert (bad_email.status, bad_email.code, bad_email.param) == (400, "invalid_email", "email")
    finally:
        await verifier.close()


async def test_the_verifier_turns_emails_into_accounts_and_back_for_the_other_deployments(
        settings, own_redis, redis):
    # The email is sealed and its index keyed with key material only the verifier pool holds.
    verifier = KeyVerifier(settings, own_redis.url)
    try:
        account = await verifier.signup("Owner@Example.com", PASSWORD)
        assert await verifier.account_id_of(" OWNER@example.com") == account.id
        assert await verifier.email_of(account.id) == "owner@example.com"
        document = await verifier.export_account(account.id)
        assert document["object"] == "account_export" and document["account"]["email"] == "owner@example.com"
        assert "email_sealed" not in document["account"] and "email_index" not in document["account"]
        for missing in (await verifier.account_id_of("nobody@example.com"),
                        await verifier.account_id_of("not an email"),
                        await verifier.email_of("acct_0000000000000000"),
                        await verifier.export_account("acct_0000000000000000")):
            assert isinstance(missing, GatewayError) and (missing.status, missing.code) == (404, "account_not_found")
    finally:
        await verifier.close()


async def test_billing_without_key_material_asks_the_verifier_for_the_sealed_stripe_ids(
        settings, own_redis, redis, monkeypatch):
    """The ingress's billing (customers, webhooks) and the usage reporter hold no key material:
    every Stripe id they need opened or sealed goes through the verifier, and Redis shows none."""
    fake = FakeStripe().start()
    monkeypatch.setenv(STRIPE_SECRET_VARIABLE, SECRET_KEY)
    settings = settings.model_copy(update={"stripe_price": METERED_PRICE, "stripe_api_base": fake.url,
                                           "billing_free_cost_units": 0})
    verifier = KeyVerifier(settings, own_redis.url)
    handle = LocalHandle(verifier)
    ingress_billing = BillingService(settings, redis, StripeBilling(SECRET_KEY, fake.url), WEBHOOK_SECRET,
                                     ids=VerifierBillingIds(handle), email_of=handle.email_of.remote)
    reporter = BillingReporter(settings, own_redis.url, handle)
    try:
        account = await verifier.signup("payer@example.com", PASSWORD)
        customer = await ingress_billing.ensure_customer(account.id)
        assert fake.customers[customer]["email"] == "payer@example.com"
        assert await verifier.billing_customer(account.id) == customer
        event = webhook_event("customer.subscription.created", {
            "id": "sub_sealed1", "object": "subscription", "customer": customer, "status": "active",
            "created": int(time.time()), "items": {"object": "list", "data": []}})
        payload = json.dumps(event).encode()
        await ingress_billing.webhook(payload, sign_webhook(payload, WEBHOOK_SECRET))
        assert (await ingress_billing.overview(account.id))["status"] == "active"
        [subscribed] = await verifier.billing_subscribed()
        assert (subscribed.account_id, subscribed.customer_id) == (account.id, customer)

        month = current_month(int(time.time() * 1000))
        await redis.hincrby(f"neuroapi:account:{account.id}:usage:{month}", "cost_micro_units", 3_000_000)
        assert await reporter.report_once() == 1
        assert [(e["payload"]["stripe_customer_id"], e["payload"]["value"]) for e in fake.meter_events] == [
            (customer, "3")]

        texts = [key async for key in redis.scan_iter("*")]
        for key in texts[:]:
            if await redis.type(key) == "hash":
                texts += [part for item in (await redis.hgetall(key)).items() for part in item]
            elif await redis.type(key) == "string":
                texts.append(await redis.get(key))
        assert not [text for text in texts if customer in text or "sub_sealed1" in text]
        missing = await verifier.set_billing_customer("acct_0000000000000000", "cus_X")
        assert isinstance(missing, GatewayError) and missing.code == "account_not_found"
    finally:
        await reporter.close()
        await ingress_billing.aclose()
        await verifier.close()
        fake.stop()


async def test_the_verifier_answers_503_while_redis_is_unreachable(settings):
    verifier = KeyVerifier(settings, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        answer = await verifier.verify(generate_key()[0])  # well-formed: it needs the key's record
        assert isinstance(answer, GatewayError)
        assert answer.status == 503 and "Retry-After" in answer.headers
    finally:
        await verifier.close()


# ---- ModeRouter ------------------------------------------------------------------------------

async def test_the_router_serves_the_table_of_the_providers_that_are_on(settings, own_redis):
    router = ModeRouter(settings, ["openai"], own_redis.url)
    table = await router.table()
    assert "gpt-4o-mini" in table.models and "smollm2-135m-instruct" in table.models
    assert "claude-haiku-4-5" not in table.models and "deepseek-chat" not in table.models
    assert [c.backend.model for c in table.resolve("fast").candidates] == ["gpt-4o-mini"]


async def test_the_router_reads_and_sets_account_scopes(settings, own_redis, redis):
    router = ModeRouter(settings, ["openai"], own_redis.url)
    missing = await router.scope("acct_0000000000000000")
    assert isinstance(missing, GatewayError)
    assert (missing.status, missing.code, missing.param) == (404, "account_not_found", "email")

    account = await account_store(redis).create("ops-target@example.com")
    assert await router.scope(account.id) == (account.id, UNRESTRICTED)
    excluded = Scope(excluded_providers=frozenset({"anthropic", "deepseek"}))
    assert (await router.set_scope(account.id, excluded, "ops@example.com"))[0] == account.id
    assert await router.scope(account.id) == (account.id, excluded)
    pinned = Scope(in_house_only=True)
    await router.set_scope(account.id, pinned, "ops@example.com")
    assert await router.scope(account.id) == (account.id, pinned)


async def test_the_router_refuses_a_scope_naming_an_unknown_provider(settings, own_redis, redis):
    router = ModeRouter(settings, ["openai"], own_redis.url)
    account = await account_store(redis).create("ops-target@example.com")
    await router.set_scope(account.id, Scope(excluded_providers=frozenset({"anthropic"})), "ops")
    answer = await router.set_scope(account.id, Scope(excluded_providers=frozenset({"openia"})), "ops")
    assert isinstance(answer, GatewayError)
    assert (answer.status, answer.code, answer.param) == (400, "invalid_value", "excluded_providers")
    assert "openia" in answer.message
    # Nothing was stored: the earlier scope still holds.
    assert await router.scope(account.id) == (account.id, Scope(excluded_providers=frozenset({"anthropic"})))
    unknown = await router.set_scope("acct_0000000000000000", UNRESTRICTED, "ops")
    assert (unknown.status, unknown.code) == (404, "account_not_found")


# ---- ProviderProxy ---------------------------------------------------------------------------

CREDENTIAL_ENV = "NEUROAPI_TEST_PROXY_CREDENTIAL"


def openai_proxy(upstreams) -> ProviderProxy:
    settings = load_settings(environ={"NEUROAPI_OPENAI_BASE_URL": upstreams.base_urls()["openai"]})
    spec = settings.providers["openai"].model_copy(update={"credential_env": CREDENTIAL_ENV})
    return ProviderProxy("openai", spec, settings.prices)


def chat(scope: Scope = UNRESTRICTED) -> UpstreamCall:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}]}
    return UpstreamCall("req-proxy", "gpt-4o-mini", body, False, scope)


async def test_the_proxy_answers_with_the_credential_named_by_its_spec(upstreams, monkeypatch):
    monkeypatch.setenv(CREDENTIAL_ENV, CREDENTIALS["openai"])
    proxy = openai_proxy(upstreams)
    try:
        answer = await proxy.complete(chat())
        assert isinstance(answer, Completion)
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 3)
        assert upstreams.requests[-1].headers["authorization"] == f"Bearer {CREDENTIALS['openai']}"
        items = [item async for item in proxy.stream(chat())]
        assert isinstance(items[0], StreamStart) and isinstance(items[-1], StreamEnd)
        assert items[-1].error is None and items[-1].usage.completion_tokens == 3
    finally:
        await proxy.close()


async def test_the_proxy_sends_whatever_its_environment_holds_and_refuses_to_start_without_it(upstreams, monkeypatch):
    monkeypatch.setenv(CREDENTIAL_ENV, "sk-not-the-right-one")
    proxy = openai_proxy(upstreams)
    try:
        answer = await proxy.complete(chat())
        assert isinstance(answer, UpstreamFailure) and answer.error.status == 502
        assert "sk-not" not in answer.error.message
    finally:
        await proxy.close()
    monkeypatch.delenv(CREDENTIAL_ENV)
    with pytest.raises(RuntimeError, match=CREDENTIAL_ENV):
        openai_proxy(upstreams)


async def test_the_proxy_refuses_a_call_its_scope_forbids_before_connecting(upstreams, monkeypatch):
    monkeypatch.setenv(CREDENTIAL_ENV, CREDENTIALS["openai"])
    proxy = openai_proxy(upstreams)
    try:
        for forbidding in (Scope(in_house_only=True), Scope(excluded_providers=frozenset({"openai"}))):
            answer = await proxy.complete(chat(forbidding))
            assert isinstance(answer, UpstreamFailure) and not answer.retriable
            assert (answer.error.status, answer.error.code) == (403, "scope_forbids")
            streamed = [item async for item in proxy.stream(chat(forbidding))]
            assert len(streamed) == 1 and streamed[0].error.code == "scope_forbids"
        assert upstreams.requests == []  # the provider never saw the prompt
        assert isinstance(await proxy.complete(chat(Scope(excluded_providers=frozenset({"anthropic"})))), Completion)
    finally:
        await proxy.close()


# ---- MetadataBatcher -------------------------------------------------------------------------

async def test_a_recorded_call_is_in_redis_once_flushed(settings, own_redis, redis):
    batcher = MetadataBatcher(settings.model_copy(update={"metering_max_age_s": 30.0}), own_redis.url)
    try:
        call = record("acct_batch", cost=1234, prompt=10, completion=20)
        await batcher.record([call])
        assert await batcher.flush() == 1
        [(_, entry)] = await redis.xrange(CALLS_STREAM)
        assert (entry["request_id"], entry["account_id"], entry["cost_micro_units"]) == (
            call.request_id, "acct_batch", "1234")
        month = await UsageStore(redis).month("acct_batch", current_month(call.timestamp_ms))
        assert (month["requests"], month["cost_micro_units"], month["prompt_tokens"]) == (1, 1234, 10)
        await batcher.record([call])  # the same call again (a retried hand-off): counted once
        await batcher.flush()
        month = await UsageStore(redis).month("acct_batch", current_month(call.timestamp_ms))
        assert month["requests"] == 1
    finally:
        await batcher.close()


# ---- ModelServer: the LoRA handshake ---------------------------------------------------------

ADAPTER = LoraAdapter("support-bot@v3", Path("/store/support-bot/v3"), "ft:support-bot")


class LoraEngine(ScriptedEngine):
    """Records adapter loads and which adapter each generation used; ``refuse`` fails loading."""

    def __init__(self, refuse: bool = False):
        super().__init__(HELLO)
        self.refuse = refuse
        self.loaded: list[LoraAdapter] = []
        self.generated_with: list[LoraAdapter | None] = []

    async def load_adapter(self, adapter: LoraAdapter) -> None:
        if self.refuse:
            raise EngineError("no room for another adapter")
        self.loaded.append(adapter)

    def generate(self, request_id, prompt_token_ids, sampling, adapter=None):
        self.generated_with.append(adapter)
        return super().generate(request_id, prompt_token_ids, sampling, adapter)


def lora_call(adapter: LoraAdapter | None = ADAPTER) -> UpstreamCall:
    body = {"model": "my-model", "messages": [{"role": "user", "content": "Hi"}]}
    return UpstreamCall("req-ft", "my-model", body, adapter=adapter)


def model_server(engine: LoraEngine) -> ModelServer:
    return ModelServer("my-model", SPEC, engine, WordTokenizer(), {})


async def test_without_a_resident_hook_a_call_loads_its_adapter_before_generating():
    engine = LoraEngine()
    model = model_server(engine)
    assert isinstance(await model.complete(lora_call()), Completion)
    assert engine.loaded == [ADAPTER] and engine.generated_with == [ADAPTER]
    assert isinstance(await model.complete(lora_call(None)), Completion)
    assert engine.loaded == [ADAPTER]  # a call without a fine-tune loads nothing
    items = [item async for item in model.stream(lora_call())]
    assert isinstance(items[0], StreamStart) and isinstance(items[-1], StreamEnd)
    assert engine.loaded == [ADAPTER, ADAPTER]  # nothing holds it resident: each call loads it


async def test_a_resident_hook_decides_when_the_adapter_is_loaded():
    """As Serve's multiplexing does in the deployment shell: load on a miss, then hold it."""
    engine = LoraEngine()
    model = model_server(engine)
    asked: list[str] = []
    held: dict[str, LoraAdapter] = {}

    async def resident(key: str) -> LoraAdapter:
        asked.append(key)
        if key not in held:
            held[key] = await model.load_adapter(key)
        return held[key]

    model.hold_adapters_with(resident)
    assert isinstance(await model.complete(lora_call()), Completion)
    items = [item async for item in model.stream(lora_call())]
    assert isinstance(items[-1], StreamEnd) and items[-1].error is None
    assert asked == ["support-bot@v3", "support-bot@v3"]
    assert engine.loaded == [ADAPTER]  # once: the second call found it resident
    assert engine.generated_with == [ADAPTER, ADAPTER]


@pytest.mark.parametrize("with_hook", [False, True])
async def test_an_adapter_that_cannot_load_is_a_final_502_and_nothing_is_generated(with_hook):
    engine = LoraEngine(refuse=True)
    model = model_server(engine)
    if with_hook:
        model.hold_adapters_with(model.load_adapter)
    answer = await model.complete(lora_call())
    assert isinstance(answer, UpstreamFailure) and answer.retriable is False
    assert (answer.error.status, answer.error.code) == (502, "finetune_unavailable")
    streamed = [item async for item in model.stream(lora_call())]
    assert len(streamed) == 1 and isinstance(streamed[0], UpstreamFailure)
    assert (streamed[0].error.code, streamed[0].retriable) == ("finetune_unavailable", False)
    assert engine.generated_with == []
    engine.refuse = False  # the engine has room again: the next call loads and answers
    assert isinstance(await model.complete(lora_call()), Completion)
    assert engine.loaded == [ADAPTER]
