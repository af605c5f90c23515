"""``/v1/admin/account-scope``: operators read and set an account's scope. The account is named
in the body, never the path: Serve's access log records paths. The verifier pool turns the email
into the account id (it holds the key material of the email index), then the router acts."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.scope import Scope
from serve_app.endpoints.admin_scopes.schema import AccountRef, AccountScope, AccountScopeChange, AccountScopeSet
from serve_app.endpoints.parsing import parse_body
from serve_app.gateway import Gateway
from serve_app.http import raise_if_error, read_body
from serve_app.openapi import documented


def admin_scopes_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/admin/account-scope/lookup", **documented(
            "Read an account's scope", request=AccountRef, response=AccountScope, auth="admin",
            tags=["admin"], errors=[400, 403, 404, 408, 413]))
    async def account_scope(request: Request) -> JSONResponse:
        await gateway.callers.admin(request)
        wanted = parse_body(AccountRef, await read_body(request, *gateway.body_limits))
        account_id = await gateway.verifier.account_id_of.remote(wanted.email)
        account_id, scope = raise_if_error(await gateway.router.scope.remote(account_id))
        return JSONResponse({"object": "account_scope", "account_id": account_id, **scope.as_dict()})

    @router.put("/v1/admin/account-scope", **documented(
            "Set an account's scope (every ingress replica confirms before the answer)",
            request=AccountScopeChange, response=AccountScopeSet, auth="admin", tags=["admin"],
            errors=[400, 403, 404, 408, 413, 503]))
    async def set_account_scope(request: Request) -> JSONResponse:
        actor = await gateway.callers.admin(request)
        change = parse_body(AccountScopeChange, await read_body(request, *gateway.body_limits))
        scope = Scope(change.in_house_only, frozenset(change.excluded_providers))
        account_id = await gateway.verifier.account_id_of.remote(change.email)
        account_id, confirmed = raise_if_error(await gateway.router.set_scope.remote(account_id, scope, actor))
        return JSONResponse({"object": "account_scope", "account_id": account_id, **scope.as_dict(),
                             "replicas_confirmed": confirmed})

    return router
