"""``/v1/admin/key-limits`` and ``/v1/admin/account-budget``: operators set any key's limits and
any account's monthly budget (issue 19). Keys and accounts are named in the body, never the
path (Serve's access log records paths). The verifier pool stores, audits and waits until every
ingress replica dropped what it cached, so the answer means "in force everywhere"."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.errors import GatewayError
from core.limits import LimitsError, micro_from_cost_units
from core.money import cost_units_text
from serve_app.endpoints.admin_limits.schema import (AccountBudgetAnswer, AccountBudgetSet, KeyLimitsAnswer,
                                                     KeyLimitsSet)
from serve_app.endpoints.parsing import parse_body
from serve_app.gateway import Gateway
from serve_app.http import raise_if_error, read_body
from serve_app.openapi import documented


def admin_limits_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.put("/v1/admin/key-limits", **documented(
            "Set a key's operator limits (every ingress replica confirms before the answer)",
            request=KeyLimitsSet, response=KeyLimitsAnswer, auth="admin", tags=["admin"],
            errors=[400, 403, 404, 408, 413, 503]))
    async def set_key_limits(request: Request) -> JSONResponse:
        actor = await gateway.callers.admin(request)
        change = parse_body(KeyLimitsSet, await read_body(request, *gateway.body_limits))
        limits, confirmed = raise_if_error(
            await gateway.verifier.set_key_limits.remote(change.prefix, change.changes(), actor))
        operator = limits.ceiling.as_dict()
        del operator["account_monthly_budget_cost_units"]  # set on the account, never on a key
        return JSONResponse({"object": "key_limits", "prefix": limits.prefix, "account_id": limits.account_id,
                             "operator_limits": operator, "limits": limits.effective.as_dict(),
                             "replicas_confirmed": confirmed})

    @router.put("/v1/admin/account-budget", **documented(
            "Set an account's monthly budget across its keys (every ingress replica confirms before the answer)",
            request=AccountBudgetSet, response=AccountBudgetAnswer, auth="admin", tags=["admin"],
            errors=[400, 403, 404, 408, 413, 503]))
    async def set_account_budget(request: Request) -> JSONResponse:
        actor = await gateway.callers.admin(request)
        change = parse_body(AccountBudgetSet, await read_body(request, *gateway.body_limits))
        try:
            budget = micro_from_cost_units(change.monthly_budget_cost_units, "monthly_budget_cost_units")
        except LimitsError as error:
            raise GatewayError(400, f"Invalid budget: {error}.", code="invalid_value",
                               param="monthly_budget_cost_units") from None
        account_id = raise_if_error(await gateway.verifier.account_id_of.remote(change.email))
        confirmed = raise_if_error(await gateway.verifier.set_account_budget.remote(account_id, budget, actor))
        return JSONResponse({"object": "account_budget", "account_id": account_id,
                             "monthly_budget_cost_units": None if budget is None else cost_units_text(budget),
                             "replicas_confirmed": confirmed})

    return router
