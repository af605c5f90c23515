"""``GET /healthz``: the replica answers."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return router
