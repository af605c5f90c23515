"""``/v1/admin/finetunes``: the ML team deploys, lists, rolls back and retires fine-tunes
(``finetunes.service``, shared with the CLI)."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.errors import GatewayError
from core.money import FINETUNE_PREFIX
from finetunes.registry import RegistryError
from finetunes.service import DeployError
from serve_app.endpoints.admin_finetunes.schema import FineTune, FineTuneDeploy, FineTuneList, FineTuneVersions
from serve_app.endpoints.parsing import parse_body
from serve_app.gateway import Gateway
from serve_app.http import read_body
from serve_app.openapi import documented


def finetune_fields(finetune) -> dict:
    return {"object": "finetune", "name": finetune.name, "version": finetune.version, "state": finetune.state,
            "base_model": finetune.base_model, "model": f"{FINETUNE_PREFIX}{finetune.name}",
            "digest": finetune.digest, "rank": finetune.rank, "owner_account": finetune.owner_account,
            "deployed_by": finetune.deployed_by, "deployed_at_ms": finetune.deployed_at_ms}


def admin_finetunes_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()
    service = gateway.finetune_service

    async def change(step, name: str, *args):
        try:
            return await step(name, *args)
        except RegistryError as error:
            try:
                known = await service.registry.versions(name)
            except RegistryError:  # not even a valid name (found by the OpenAPI fuzz): no such fine-tune
                known = []
            status, code = (409, "finetune_conflict") if known else (404, "finetune_not_found")
            raise GatewayError(status, f"{error}.", code=code, param="name") from None

    @router.get("/v1/admin/finetunes", **documented("Every fine-tune: its live version, or retired",
                                                   response=FineTuneList, auth="admin", tags=["admin"],
                                                   errors=[403]))
    async def finetunes(request: Request) -> JSONResponse:
        await gateway.callers.admin(request)
        return JSONResponse({"object": "list", "data": [
            finetune_fields(live) if live else {"object": "finetune", "name": name, "state": "retired"}
            for name, live in await service.listing()]})

    @router.post("/v1/admin/finetunes", status_code=201, **documented(
            "Deploy a fine-tune (a PEFT LoRA folder) as a new live version", request=FineTuneDeploy,
            response=FineTune, status=201, auth="admin", tags=["admin"], errors=[400, 403, 408, 413]))
    async def deploy_finetune(request: Request) -> JSONResponse:
        actor = await gateway.callers.admin(request)
        wanted = parse_body(FineTuneDeploy, await read_body(request, *gateway.body_limits))
        try:
            live = await service.deploy(Path(wanted.path), wanted.base, wanted.name, wanted.account, actor)
        except DeployError as error:
            raise GatewayError(400, f"Not deployed: {error}.", code="invalid_finetune",
                               param=error.where or None) from None
        return JSONResponse(finetune_fields(live), status_code=201)

    @router.get("/v1/admin/finetunes/{name}", **documented(
            "A fine-tune's versions", response=FineTuneVersions, auth="admin", tags=["admin"], errors=[403, 404]))
    async def finetune_versions(name: str, request: Request) -> JSONResponse:
        await gateway.callers.admin(request)
        versions = await change(service.show, name)
        return JSONResponse({"object": "list", "data": [finetune_fields(v) for v in versions]})

    @router.post("/v1/admin/finetunes/{name}/rollback", **documented(
            "Make the previous live version live again", response=FineTune, auth="admin", tags=["admin"],
            errors=[403, 404, 409]))
    async def rollback_finetune(name: str, request: Request) -> JSONResponse:
        actor = await gateway.callers.admin(request)
        return JSONResponse(finetune_fields(await change(service.rollback, name, actor)))

    @router.delete("/v1/admin/finetunes/{name}", **documented(
            "Retire a fine-tune: callers can no longer use it", response=FineTune, auth="admin", tags=["admin"],
            errors=[403, 404, 409]))
    async def retire_finetune(name: str, request: Request) -> JSONResponse:
        actor = await gateway.callers.admin(request)
        return JSONResponse(finetune_fields(await change(service.retire, name, actor)))

    return router
