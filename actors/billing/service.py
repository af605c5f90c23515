"""Billing as the API and the CLI use it: a customer per account (made at sign-up, or later if
Stripe was away), Checkout and portal links, the account's billing overview, and webhooks
applied once with every ingress replica told before the webhook is answered.

A new Stripe customer is named with the account's email, which is sealed at rest
(``actors.accounts.sealing``): ``email_of`` opens it where key material is (the ingress asks the
verifier pool; the CLI opens it itself). A process given none (the usage reporter) never makes
customers.

The Stripe ids are sealed at rest too and their index is keyed (``actors.billing.store``), so
everything that needs them opened goes through ``BillingIds``: ``SealedBillingIds`` where key
material is (the verifier pool, the CLI), ``VerifierBillingIds`` elsewhere (the ingress: customers,
webhooks; the usage reporter: the subscribed customers), which asks the verifier pool
(``actors.keys.verifier``). What needs no id (the gate, the overview) reads ``self.store``, a
store without key material."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis

from actors.accounts.sealing import AccountSealer
from actors.billing.gate import allowed
from actors.billing.reporter import Subscribed, UsageReporter
from actors.billing.store import BillingStore
from actors.billing.stripe_api import BillingUnavailable, StripeBilling
from actors.billing.webhooks import apply, verify
from actors.metering.record import current_month
from actors.metering.usage_store import UsageStore
from config.settings import Settings
from core.invalidation import broadcast
from core.errors import GatewayError
from core.money import MICRO, cost_units_text

logger = logging.getLogger("neuroapi.billing")
BILLING_TOPIC = "billing"  # subject: an account whose billing decision must be read again


class StoredSubscriptions:
    """``reporter.SubscribedAccounts`` over the billing store: every account Stripe bills. The
    store must hold key material (the customer ids are sealed)."""

    def __init__(self, store: BillingStore):
        self._store = store

    async def subscribed(self) -> list[Subscribed]:
        found = []
        for account_id in await self._store.accounts():
            state = await self._store.state(account_id)
            if state.subscribed and state.customer_id:
                found.append(Subscribed(account_id, state.customer_id, state.status,
                                        since_month=state.billed_from_month, unbilled_micro=state.billed_from_micro))
        return found


class BillingIds(Protocol):
    """What of billing needs the Stripe ids opened or sealed, or their index named."""

    async def customer_id(self, account_id: str) -> str:
        """The account's customer id, "" when it has none."""

    async def set_customer(self, account_id: str, customer_id: str) -> None: ...

    async def apply_event(self, event: dict) -> str | None:
        """``webhooks.apply`` of a verified event: the account whose gating may have changed."""

    async def subscribed(self) -> list[Subscribed]:
        """``reporter.SubscribedAccounts``: the accounts Stripe bills, their customer ids opened."""


class SealedBillingIds:
    """``BillingIds`` where key material is: the verifier pool and the CLI."""

    def __init__(self, redis: aioredis.Redis, sealer: AccountSealer):
        self._redis = redis
        self.store = BillingStore(redis, sealer)

    def __repr__(self) -> str:
        return "SealedBillingIds()"

    async def customer_id(self, account_id: str) -> str:
        return await self.store.customer_id(account_id)

    async def set_customer(self, account_id: str, customer_id: str) -> None:
        await self.store.set_customer(account_id, customer_id)

    async def apply_event(self, event: dict) -> str | None:
        return await apply(self.store, self._redis, event)

    async def subscribed(self) -> list[Subscribed]:
        return await StoredSubscriptions(self.store).subscribed()


class VerifierBillingIds:
    """``BillingIds`` asked of the verifier pool (``KeyVerifier.billing_*``), for a process
    without key material. ``verifier``: a handle (``.method.remote(...)``); an error the
    verifier returns as a value is raised here."""

    def __init__(self, verifier: Any):
        self._verifier = verifier

    async def _ask(self, method: str, *args: Any) -> Any:
        answer = await getattr(self._verifier, method).remote(*args)
        if isinstance(answer, GatewayError):
            raise answer
        return answer

    async def customer_id(self, account_id: str) -> str:
        return await self._ask("billing_customer", account_id)

    async def set_customer(self, account_id: str, customer_id: str) -> None:
        await self._ask("set_billing_customer", account_id, customer_id)

    async def apply_event(self, event: dict) -> str | None:
        return await self._ask("apply_billing_event", event)

    async def subscribed(self) -> list[Subscribed]:
        return await self._ask("billing_subscribed")


class BillingService:
    def __init__(self, settings: Settings, redis: aioredis.Redis, stripe: StripeBilling,
                 webhook_secret: str = "", *, ids: BillingIds,
                 email_of: Callable[[str], Awaitable[str]] | None = None):
        self._settings = settings
        self._redis = redis
        self._stripe = stripe
        self._webhook_secret = webhook_secret
        self.store = BillingStore(redis)  # status only: the gate and the overview need no id
        self.ids = ids
        self._email_of = email_of
        self._usage = UsageStore(redis)

    @property
    def free_micro(self) -> int:
        return self._settings.billing_free_cost_units * MICRO

    def reporter(self) -> UsageReporter:
        return UsageReporter(self._redis, self._stripe, self._settings.stripe_meter_event, self.free_micro,
                             self.ids)

    async def aclose(self) -> None:
        await self._stripe.aclose()

    async def ensure_customer(self, account_id: str) -> str:
        """The account's Stripe customer, created now if it has none (raises BillingUnavailable)."""
        customer = await self.ids.customer_id(account_id)
        if customer:
            return customer
        if self._email_of is None:
            raise RuntimeError("this process cannot open account emails, so it makes no Stripe customer")
        customer = await self._stripe.create_customer(await self._email_of(account_id), account_id)
        await self.ids.set_customer(account_id, customer)
        return customer

    async def customer_at_signup(self, account_id: str) -> None:
        """Best effort: Stripe away at sign-up loses nothing, the customer is made when needed."""
        try:
            await self.ensure_customer(account_id)
        except BillingUnavailable:
            logger.warning("billing: no Stripe customer yet for a new account (Stripe unavailable)")

    async def checkout_url(self, account_id: str) -> str:
        customer = await self.ensure_customer(account_id)
        return await self._stripe.checkout_url(customer, self._settings.stripe_price or "",
                                               self._settings.billing_return_url, self._settings.billing_return_url)

    async def portal_url(self, account_id: str) -> str:
        return await self._stripe.portal_url(await self.ensure_customer(account_id), self._settings.billing_return_url)

    async def overview(self, account_id: str) -> dict:
        state = await self.store.state(account_id)
        month = current_month(int(time.time() * 1000))
        cost = int((await self._usage.month(account_id, month)).get("cost_micro_units", 0))
        return {
            "object": "billing", "enabled": True, "account_id": account_id,
            "status": state.status, "subscribed": state.subscribed,
            "current_period": {"start": state.period_start, "end": state.period_end},
            "month": month, "cost_units": cost_units_text(cost),
            "free_cost_units": cost_units_text(self.free_micro),
            "free_cost_units_left": cost_units_text(max(self.free_micro - cost, 0)),
            "may_call": allowed(state, cost, self.free_micro, self._settings.billing_past_due_grace_s,
                                int(time.time())),
        }

    async def webhook(self, payload: bytes, signature: str) -> None:
        """Verify (raises InvalidWebhook), apply once, and make every ingress replica read the
        account's billing again before this returns (as a revocation does)."""
        event = verify(payload, signature, self._webhook_secret)
        account_id = await self.ids.apply_event(event)
        if account_id:
            await broadcast(self._redis, BILLING_TOPIC, account_id)
