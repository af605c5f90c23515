"""``/v1/billing``: a logged-in account subscribes (Checkout), manages its subscription (the
customer portal) and sees its plan and this month's cost; Stripe posts its events to the webhook.
The work is ``actors.billing.service.BillingService``'s."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from actors.billing.stripe_api import BillingRejected, BillingUnavailable
from actors.billing.webhooks import InvalidWebhook
from core.errors import GatewayError
from serve_app.endpoints.billing.schema import BillingOverview, BillingRedirect, WebhookReceived
from serve_app.gateway import Gateway
from serve_app.http import read_body
from serve_app.openapi import documented


def billing_off() -> GatewayError:
    return GatewayError(404, "Billing is off on this gateway.", code="billing_disabled")


def stripe_unavailable() -> GatewayError:
    return GatewayError(503, "The payment provider cannot be reached right now; retry shortly.", "server_error",
                        "billing_unavailable", headers={"Retry-After": "5"})


def billing_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    def service():
        if gateway.billing is None:
            raise billing_off()
        return gateway.billing

    async def with_stripe(step):
        try:
            return await step
        except BillingUnavailable:
            raise stripe_unavailable() from None
        except BillingRejected:
            raise GatewayError(502, "The payment provider refused the request.", "server_error",
                               "billing_rejected") from None

    @router.get("/v1/billing", **documented("The account's plan and this month's cost",
                                           response=BillingOverview, auth="session", tags=["billing"]))
    async def overview(request: Request) -> JSONResponse:
        session = await gateway.callers.session(request)
        if gateway.billing is None:
            return JSONResponse({"object": "billing", "enabled": False, "account_id": session.account_id})
        return JSONResponse(await gateway.billing.overview(session.account_id))

    @router.post("/v1/billing/checkout", **documented(
            "Subscribe: a Stripe Checkout page", response=BillingRedirect, auth="session", tags=["billing"],
            errors=[404, 502, 503], description="404 `billing_disabled` when billing is off on this gateway."))
    async def checkout(request: Request) -> JSONResponse:
        session = await gateway.callers.session(request)
        url = await with_stripe(service().checkout_url(session.account_id))
        return JSONResponse({"object": "billing.checkout", "url": url})

    @router.post("/v1/billing/portal", **documented(
            "Manage the subscription: Stripe's customer portal", response=BillingRedirect, auth="session",
            tags=["billing"], errors=[404, 502, 503],
            description="404 `billing_disabled` when billing is off on this gateway."))
    async def portal(request: Request) -> JSONResponse:
        session = await gateway.callers.session(request)
        url = await with_stripe(service().portal_url(session.account_id))
        return JSONResponse({"object": "billing.portal", "url": url})

    @router.post("/v1/billing/webhook", **documented(
            "Stripe's events (called by Stripe, not by API callers)", response=WebhookReceived, auth="stripe",
            tags=["billing"], errors=[400, 404, 408, 413, 503],
            description="The body is a Stripe event as Stripe signs it (JSON), checked against "
                        "`Stripe-Signature`; applied once."))
    async def webhook(request: Request) -> JSONResponse:
        billing = service()
        payload = await read_body(request, *gateway.body_limits)
        try:
            await billing.webhook(payload, request.headers.get("stripe-signature", ""))
        except InvalidWebhook:
            raise GatewayError(400, "The webhook's signature is missing, wrong or too old.",
                               code="invalid_signature") from None
        return JSONResponse({"received": True})

    return router
