"""Stripe webhooks: verified with the endpoint secret, applied to an account once, in order.

Stripe neither orders nor deduplicates deliveries. Each event is applied at most once (its id is
marked with the change, ``BillingStore.update_once``), and a status only moves forward: the
version of a status is the ``created`` time of the event that set it, and an older event never
overwrites a newer status. A canceled subscription (``canceled``/``incomplete_expired`` are
terminal in Stripe) is never revived by a late event about the same subscription, and the end of
an old subscription does not end the account's current one.

Shapes (Stripe API 2025-03-31.basil and later; older fields are read as a fallback):
subscription periods are on its items (``items.data[].current_period_start/end``); an invoice
names its subscription in ``parent.subscription_details.subscription`` (formerly
``invoice.subscription``); a checkout.session carries ``customer`` and ``subscription``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
import stripe

from actors.accounts.store import AccountError
from actors.billing.store import SUBSCRIBED, TERMINAL, BillingState, BillingStore
from actors.metering.record import current_month
from actors.metering.usage_store import UsageStore

logger = logging.getLogger("neuroapi.billing")

TOLERANCE_S = 300  # Stripe's default: an older signed timestamp may be a replay
SUBSCRIPTION_EVENTS = ("customer.subscription.created", "customer.subscription.updated",
                       "customer.subscription.deleted")
HANDLED = (*SUBSCRIPTION_EVENTS, "checkout.session.completed", "invoice.paid", "invoice.payment_failed")


class InvalidWebhook(ValueError):
    """A body that is not signed by Stripe with this endpoint's secret, or signed too long ago."""


def verify(payload: bytes, signature_header: str, secret: str, tolerance_s: int = TOLERANCE_S) -> dict:
    """The event in ``payload`` once its ``Stripe-Signature`` proves it is Stripe's and recent."""
    try:
        stripe.WebhookSignature.verify_header(payload, signature_header, secret, tolerance_s)
    except stripe.SignatureVerificationError as error:
        # The SDK's error carries the header and body; only its reason goes further.
        raise InvalidWebhook(f"invalid Stripe signature: {error.user_message or 'rejected'}") from None
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidWebhook("the signed body is not JSON") from None
    if not isinstance(event, dict) or event.get("object") != "event" or not event.get("id"):
        raise InvalidWebhook("the signed body is not a Stripe event")
    return event


def _id(value: Any) -> str:
    """An id field that may come expanded into its object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def _period(subscription: dict) -> tuple[int, int]:
    for item in (subscription.get("items") or {}).get("data") or []:
        if item.get("current_period_start") and item.get("current_period_end"):
            return int(item["current_period_start"]), int(item["current_period_end"])
    return int(subscription.get("current_period_start") or 0), int(subscription.get("current_period_end") or 0)


def _invoice_subscription(invoice: dict) -> str:
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return _id(details.get("subscription")) or _id(invoice.get("subscription"))


def _with_status(state: BillingState, status: str, version: int, subscription_id: str,
                 month: str, month_cost_micro: int) -> BillingState:
    changed = status != state.status or subscription_id != state.subscription_id
    new = replace(state, status=status, status_at=version, subscription_id=subscription_id,
                  status_since=version if changed else state.status_since)
    if status in SUBSCRIBED and not state.subscribed and state.billed_from_month != month:
        # The first subscription of the month: what was used before it was the free tier's.
        new = replace(new, billed_from_micro=month_cost_micro, billed_from_month=month)
    return new


def _subscription_change(state: BillingState, subscription: dict, deleted: bool, version: int,
                         month: str, month_cost_micro: int) -> BillingState | None:
    sub_id = _id(subscription)
    status = "canceled" if deleted else str(subscription.get("status") or "")
    if not sub_id or not status or version < state.status_at:
        return None  # an older event than the status we hold
    if sub_id == state.subscription_id and state.status in TERMINAL and status not in TERMINAL:
        return None  # an ended subscription never comes back
    if sub_id != state.subscription_id and state.subscribed and status not in SUBSCRIBED:
        return None  # another (older) subscription ended; the current one stands
    start, end = _period(subscription)
    new = _with_status(state, status, version, sub_id, month, month_cost_micro)
    return replace(new, period_start=start or state.period_start, period_end=end or state.period_end)


def _invoice_change(state: BillingState, invoice: dict, paid: bool, version: int,
                    month: str, month_cost_micro: int) -> BillingState | None:
    sub_id = _invoice_subscription(invoice)
    if not sub_id or version < state.status_at:
        return None
    if state.subscription_id and sub_id != state.subscription_id:
        return None  # an invoice of a subscription the account no longer has
    if paid and (state.status in ("past_due", "unpaid", "incomplete") or not state.subscription_id):
        return _with_status(state, "active", version, sub_id, month, month_cost_micro)
    if not paid and state.status in ("active", "trialing"):
        return _with_status(state, "past_due", version, sub_id, month, month_cost_micro)
    return None


def _checkout_change(state: BillingState, session: dict) -> BillingState | None:
    sub_id = _id(session.get("subscription"))
    if session.get("mode") != "subscription" or not sub_id or sub_id == state.subscription_id:
        return None
    if state.subscription_id and state.subscribed:
        return None  # the account's current subscription stays linked
    # Only the link: the status (and its version) come from the subscription's own events,
    # which may have been created before this session completed.
    return replace(state, subscription_id=sub_id)


async def apply(store: BillingStore, redis: aioredis.Redis, event: dict, *,
                now: int | None = None) -> str | None:
    """Apply a verified event once. Returns the account id when its gating decision may have
    changed (its status did: the caller broadcasts topic "billing" for it), else None."""
    kind = event.get("type")
    obj = (event.get("data") or {}).get("object") or {}
    if kind not in HANDLED or not isinstance(obj, dict):
        return None
    account_id = await store.account_for_customer(_id(obj.get("customer")))
    if account_id is None:
        # Not marked as applied: a redelivery after the customer is recorded can still apply.
        logger.warning("billing: webhook %s for a customer no account has", kind)
        return None
    version = int(event.get("created") or 0)
    month = current_month(int((time.time() if now is None else now) * 1000))
    month_cost = 0
    if kind != "checkout.session.completed":
        month_cost = int((await UsageStore(redis).month(account_id, month))["cost_micro_units"])

    def decide(state: BillingState) -> BillingState | None:
        if kind in SUBSCRIPTION_EVENTS:
            return _subscription_change(state, obj, kind.endswith(".deleted"), version, month, month_cost)
        if kind.startswith("invoice."):
            return _invoice_change(state, obj, kind == "invoice.paid", version, month, month_cost)
        return _checkout_change(state, obj)

    try:
        changed = await store.update_once(str(event["id"]), account_id, decide)
    except AccountError:
        logger.warning("billing: webhook %s for a deleted account", kind)
        return None
    if changed is None:
        return None
    before, after = changed
    return account_id if before.status != after.status else None
