"""``GET /openapi.json`` and ``GET /docs``: the OpenAPI document of every public endpoint, and the
same document as a readable page. Public: they describe the API, never an account."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from serve_app.endpoints.docs.service import cached_document, cached_page
from serve_app.openapi import documented


def docs_router() -> APIRouter:
    router = APIRouter()

    # Built once per replica, in a thread: ~0.1 s of schema generation must not stall the streams
    # this replica is relaying.
    @router.get("/openapi.json", **documented("This OpenAPI 3.1 document", tags=["docs"]))
    async def openapi_document(request: Request) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(cached_document, request.app))

    @router.get("/docs", **documented("The OpenAPI document as a readable HTML page", tags=["docs"],
                                      response_media_type="text/html"))
    async def docs_page(request: Request) -> HTMLResponse:
        return HTMLResponse(await asyncio.to_thread(cached_page, request.app))

    return router
