"""``GET /healthz``: the replica answers."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.endpoints.health.schema import Health
from serve_app.openapi import documented


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", **documented("The replica answers", response=Health, tags=["health"]))
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return router
