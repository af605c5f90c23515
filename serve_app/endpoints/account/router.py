"""``/v1/account``: the account holder's data-subject requests — export everything NeuroAPI
holds about the account, or delete it (keys rejected everywhere at once, data purged by the
next purge batch, accounting records kept detached: ``actors.accounts.deletion``)."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.errors import GatewayError
from serve_app.endpoints.account.schema import AccountDeleted, AccountDeletion, AccountExport
from serve_app.endpoints.parsing import parse_body
from serve_app.gateway import Gateway
from serve_app.http import raise_if_error, read_body
from serve_app.openapi import documented


def account_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/account/export", **documented(
            "Export everything NeuroAPI holds about the account", response=AccountExport, auth="session",
            tags=["account"], errors=[404]))
    async def export(request: Request) -> JSONResponse:
        session = await gateway.callers.session(request)
        # Read by the verifier pool: the account's email is sealed with key material only it holds.
        return JSONResponse(await gateway.verifier.export_account.remote(session.account_id))

    @router.delete("/v1/account", **documented(
            "Delete the account (keys refused at once, data purged by the next purge batch)",
            request=AccountDeletion, response=AccountDeleted, auth="session", tags=["account"],
            errors=[400, 404, 408, 413]))
    async def delete(request: Request) -> JSONResponse:
        address = gateway.callers.source(request)
        session = await gateway.callers.session(request)
        wanted = parse_body(AccountDeletion, await read_body(request, *gateway.body_limits))
        deleted = raise_if_error(await gateway.verifier.delete_account.remote(session.account_id, wanted.password))
        if deleted is None:  # the wrong password: a failed attempt like any other
            raise await gateway.callers.failed(address, GatewayError(401, "Wrong password.",
                                                                     code="invalid_credentials"))
        return JSONResponse({"object": "account", "id": session.account_id, "deleted": True,
                             "purge": "the account's data is purged by the next purge batch"})

    return router
