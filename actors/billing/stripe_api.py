"""The few Stripe calls NeuroAPI makes, over the official SDK's async API.

Every failure comes out as one of two exceptions, so callers decide only "retry later"
(`BillingUnavailable`) or "retrying will not help" (`BillingRejected`). The secret key is
never part of this object's repr, nor of any message raised from here."""

from __future__ import annotations

import hashlib
import re

import stripe

# Stripe keeps idempotency keys for at least 24 hours, at most 255 characters.
_MAX_IDEMPOTENCY_KEY = 255
# A Stripe secret or restricted key, however it ends up in a message.
_STRIPE_KEY = re.compile(r"\b(?:sk|rk)_(?:test|live)_[A-Za-z0-9]+")
# v1 answers a repeated meter event identifier with a plain 400 invalid_request_error and no
# code ("An event already exists with identifier X."); v2 says code duplicate_meter_event.
_DUPLICATE_IDENTIFIER = re.compile(r"already exists with identifier", re.IGNORECASE)
# Statuses that say "not now" rather than "never": conflicts (a concurrent call per
# customer and meter), a failed dependency, rate limits, and server errors.
_RETRYABLE_STATUSES = {409, 424, 429}


class BillingUnavailable(Exception):
    """Stripe could not be reached or is failing (5xx, 429, 409): try again later."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class BillingRejected(Exception):
    """Stripe refused the request (a 4xx): retrying the same request will not change that."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


def customer_idempotency_key(account_id: str) -> str:
    """The same account always asks with the same key, so a retried sign-up makes one customer."""
    key = f"neuroapi-customer-{account_id}"
    if len(key) <= _MAX_IDEMPOTENCY_KEY:
        return key
    return "neuroapi-customer-sha256-" + hashlib.sha256(account_id.encode()).hexdigest()


class StripeBilling:
    """Customers, Checkout and portal sessions, and billing meter events for NeuroAPI.

    `api_base` points the SDK at another server (a local Stripe-compatible one in tests);
    plain http works. `max_network_retries` is 0 by default: callers retry on their own
    schedule (the usage reporter), and a sign-up should not wait on backoff."""

    def __init__(
        self,
        secret_key: str,
        api_base: str | None = None,
        *,
        timeout_s: float = 10.0,
        max_network_retries: int = 0,
    ) -> None:
        if not secret_key:
            raise ValueError("a Stripe secret key is required")
        self._secret = secret_key
        self._api_base = api_base.rstrip("/") if api_base else None
        base_addresses = {"api": self._api_base, "meter_events": self._api_base} if self._api_base else None
        # Async-only httpx client: the sync fallback (requests) would block the event loop.
        self._http = stripe.HTTPXClient(timeout=timeout_s)
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses=base_addresses,
            max_network_retries=max_network_retries,
            http_client=self._http,
        )

    def __repr__(self) -> str:
        return f"StripeBilling(api_base={self._api_base or stripe.DEFAULT_API_BASE!r})"

    __str__ = __repr__

    async def aclose(self) -> None:
        await self._http.close_async()

    async def create_customer(self, email: str, account_id: str) -> str:
        """A customer for this account; asking again for the same account returns the same one
        (for as long as Stripe keeps the idempotency key: at least 24 hours)."""
        try:
            customer = await self._client.v1.customers.create_async(
                {"email": email, "metadata": {"neuroapi_account": account_id}},
                {"idempotency_key": customer_idempotency_key(account_id)},
            )
        except stripe.StripeError as exc:
            raise self._mapped("create customer", exc) from None
        return customer.id

    async def checkout_url(self, customer_id: str, price_id: str, success_url: str, cancel_url: str) -> str:
        """A hosted Checkout page subscribing the customer to the price. No quantity: Stripe
        refuses one for a metered price (usage comes from meter events)."""
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                {
                    "mode": "subscription",
                    "customer": customer_id,
                    "line_items": [{"price": price_id}],
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                }
            )
        except stripe.StripeError as exc:
            raise self._mapped("create checkout session", exc) from None
        if not session.url:
            raise BillingRejected("Stripe returned a Checkout Session without a URL")
        return session.url

    async def portal_url(self, customer_id: str, return_url: str) -> str:
        """A customer-portal page where the customer manages or cancels the subscription."""
        try:
            session = await self._client.v1.billing_portal.sessions.create_async(
                {"customer": customer_id, "return_url": return_url}
            )
        except stripe.StripeError as exc:
            raise self._mapped("create portal session", exc) from None
        return session.url

    async def send_meter_event(
        self, event_name: str, customer_id: str, value: int, identifier: str, timestamp: int
    ) -> None:
        """Report `value` (a whole number) of usage for the customer, once per identifier.

        Stripe refuses an identifier it has already accepted; that refusal means the usage is
        already recorded, so it returns normally. Each call gets a fresh Idempotency-Key (the
        SDK's): a resend after a lost answer must reach Stripe's identifier check, not replay a
        saved 500 for 24 hours."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("a meter event value is a non-negative whole number")
        try:
            await self._client.v1.billing.meter_events.create_async(
                {
                    "event_name": event_name,
                    "payload": {"stripe_customer_id": customer_id, "value": str(value)},
                    "identifier": identifier,
                    "timestamp": int(timestamp),
                }
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 400 and (
                exc.code == "duplicate_meter_event" or _DUPLICATE_IDENTIFIER.search(exc.user_message or "")
            ):
                return
            raise self._mapped("send meter event", exc) from None
        except stripe.StripeError as exc:
            raise self._mapped("send meter event", exc) from None

    def _mapped(self, action: str, exc: stripe.StripeError) -> BillingUnavailable | BillingRejected:
        status = exc.http_status
        error = exc.error
        kind = getattr(error, "type", None) if error is not None else None
        code = exc.code or (getattr(error, "code", None) if error is not None else None)
        detail = self._scrubbed(exc.user_message or type(exc).__name__)
        if isinstance(exc, stripe.APIConnectionError) or status is None:
            return BillingUnavailable(f"Stripe unreachable ({action}): {detail}", None, code)
        message = f"Stripe {action} failed: HTTP {status}"
        if kind or code:
            message += f" ({'/'.join(x for x in (kind, code) if x)})"
        message += f": {detail}"
        if exc.request_id:
            message += f" [{exc.request_id}]"
        if status >= 500 or status in _RETRYABLE_STATUSES:
            return BillingUnavailable(message, status, code)
        return BillingRejected(message, status, code)

    def _scrubbed(self, text: str) -> str:
        return _STRIPE_KEY.sub("sk_***", text.replace(self._secret, "sk_***"))
