"""``/v1/keys``: a logged-in account mints, lists and revokes its API keys."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.errors import GatewayError
from serve_app.endpoints.keys.schema import ApiKeyInfo, ApiKeyList, KeyLimitsChange, NewApiKey, NewKey, RevokedKey
from serve_app.endpoints.parsing import parse_body
from serve_app.gateway import Gateway
from serve_app.http import raise_if_error, read_body
from serve_app.openapi import documented


def key_fields(info) -> dict:
    """A key's public description: never the secret, its hash or its ciphertext."""
    operator = info.ceiling.as_dict()
    del operator["account_monthly_budget_cost_units"]  # set on the account, never on a key
    return {"prefix": info.prefix, "name": info.name, "status": info.status,
            "created_at": info.created_at, "last_used_at": info.last_used_at,
            "limits": info.limits.as_dict(), "operator_limits": operator}


def keys_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()
    callers, verifier = gateway.callers, gateway.verifier

    @router.post("/v1/keys", status_code=201, **documented(
            "Mint an API key (the whole key is shown once)", request=NewKey, request_required=False,
            response=NewApiKey, status=201, auth="session", tags=["keys"], errors=[400, 408, 413]))
    async def create_key(request: Request) -> JSONResponse:
        session = await callers.session(request)
        new_key = parse_body(NewKey, await read_body(request, *gateway.body_limits) or b"{}")
        plaintext, info = await verifier.create_key.remote(session.account_id, new_key.name)
        return JSONResponse({"object": "api_key", "key": plaintext, **key_fields(info)}, status_code=201)

    @router.get("/v1/keys", **documented("This account's API keys (never their secrets)", response=ApiKeyList,
                                        auth="session", tags=["keys"]))
    async def list_keys(request: Request) -> JSONResponse:
        session = await callers.session(request)
        infos = await verifier.list_keys.remote(session.account_id)
        return JSONResponse({"object": "list", "data": [{"object": "api_key", **key_fields(i)} for i in infos]})

    @router.delete("/v1/keys/{prefix}", **documented(
            "Revoke an API key: refused everywhere at once", response=RevokedKey, auth="session", tags=["keys"],
            errors=[404]))
    async def revoke_key(prefix: str, request: Request) -> JSONResponse:
        session = await callers.session(request)
        if not await verifier.revoke_key.remote(session.account_id, prefix):
            raise GatewayError(404, f"This account has no key '{prefix}'.", code="key_not_found", param="prefix")
        return JSONResponse({"object": "api_key", "prefix": prefix, "status": "revoked"})

    @router.patch("/v1/keys/{prefix}", **documented(
            "Set an API key's limits (in force on every replica before the answer)", request=KeyLimitsChange,
            response=ApiKeyInfo, auth="session", tags=["keys"], errors=[400, 403, 404, 408, 413, 503]))
    async def set_key_limits(prefix: str, request: Request) -> JSONResponse:
        session = await callers.session(request)
        change = parse_body(KeyLimitsChange, await read_body(request, *gateway.body_limits))
        info = raise_if_error(await verifier.update_key_limits.remote(session.account_id, prefix, change.changes()))
        return JSONResponse({"object": "api_key", **key_fields(info)})

    return router
