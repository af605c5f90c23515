"""``GET /v1/usage``: this month's and last month's counters, by mode."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from actors.accounts.sessions import TOKEN_TAG as SESSION_TOKEN_TAG
from actors.keys.limit_settings import LimitSettings
from actors.limits.store import budget_view
from actors.metering.usage_report import usage_document
from core.limits import Limits
from serve_app.endpoints.usage.schema import UsageDocument
from serve_app.gateway import Gateway
from serve_app.http import presented_key
from serve_app.openapi import documented


def usage_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/usage", **documented("This month's and last month's usage and cost, by mode, and the "
                                         "budgets with what is left",
                                         response=UsageDocument, auth="session_or_api_key", tags=["usage"]))
    async def usage(request: Request) -> JSONResponse:
        """A session token or an API key."""
        if (presented_key(request) or "").startswith(SESSION_TOKEN_TAG):
            account_id, prefix = (await gateway.callers.session(request)).account_id, None
            limits = Limits(account_budget_micro=await LimitSettings(gateway.redis).account_budget(account_id))
        else:
            verified = await gateway.callers.api_key(request)
            account_id, prefix, limits = verified.account_id, verified.prefix, verified.limits
        document = await usage_document(gateway.usage, account_id)
        spend = await gateway.limit_store.spent(prefix, account_id)
        return JSONResponse(document | {"budgets": budget_view(limits, spend, prefix)})

    return router
