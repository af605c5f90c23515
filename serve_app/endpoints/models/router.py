"""``GET /v1/models``: what this caller's scope may use, with in-house models' engines."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from actors.metering.call_meter import CallMeter
from core.errors import GatewayError
from serve_app.gateway import Gateway


def model_entry(gateway: Gateway, name: str) -> dict:
    backend = gateway.table.models.get(name)
    entry = {"id": name, "object": "model", "created": 0, "owned_by": backend.provider if backend else "neuroapi"}
    if backend is not None and backend.in_house:
        entry["in_house"] = True
        if name in gateway.engines:
            entry["engine"] = gateway.engines[name]
    return entry


def models_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        prices = gateway.settings.prices
        meter = CallMeter.start(request.headers.get("x-request-id", ""), request.headers.get("content-length"))
        try:
            verified = await gateway.callers.api_key(request)
        except GatewayError as error:
            gateway.record(meter.rejected(error, prices))
            raise
        meter.key_prefix, meter.account_id = verified.prefix, verified.account_id
        listing = JSONResponse({"object": "list", "data": [
            model_entry(gateway, name) for name in gateway.table.listing(verified.scope)]})
        gateway.record(meter.finish(200, len(listing.body), None, False, prices))
        return listing

    return router
