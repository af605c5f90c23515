"""``GET /v1/models``: what this caller's scope may use (``service.model_list``)."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from actors.metering.call_meter import CallMeter
from core.errors import GatewayError
from serve_app.endpoints.models.service import model_list
from serve_app.endpoints.models.schema import ModelList
from serve_app.gateway import Gateway
from serve_app.openapi import documented


def models_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models", **documented("The models and modes this key may use", response=ModelList,
                                          auth="api_key", tags=["models"]))
    async def list_models(request: Request) -> JSONResponse:
        prices = gateway.settings.prices
        meter = CallMeter.start(request.headers.get("x-request-id", ""), request.headers.get("content-length"),
                                "/v1/models")
        try:
            verified = await gateway.callers.api_key(request)
        except GatewayError as error:
            gateway.record(meter.rejected(error, prices))
            raise
        meter.key_prefix, meter.account_id = verified.prefix, verified.account_id
        listing = JSONResponse(model_list(gateway.table, gateway.settings, gateway.engines, verified.scope))
        gateway.record(meter.finish(200, len(listing.body), None, False, prices))
        return listing

    return router
