"""The HTTP API of one ingress replica: one router per endpoint family over a shared ``Gateway``.

A new endpoint family is a package under ``serve_app/endpoints/`` (router, schema, service) and
one line here."""

from fastapi import FastAPI

from serve_app.endpoints.account.router import account_router
from serve_app.endpoints.admin_finetunes.router import admin_finetunes_router
from serve_app.endpoints.admin_limits.router import admin_limits_router
from serve_app.endpoints.admin_scopes.router import admin_scopes_router
from serve_app.endpoints.auth.router import auth_router
from serve_app.endpoints.billing.router import billing_router
from serve_app.endpoints.chat.router import chat_router
from serve_app.endpoints.embeddings.router import embeddings_router
from serve_app.endpoints.docs.router import docs_router
from serve_app.endpoints.generate.router import generate_router
from serve_app.endpoints.health.router import health_router
from serve_app.endpoints.messages.router import messages_router
from serve_app.endpoints.keys.router import keys_router
from serve_app.endpoints.models.router import models_router
from serve_app.endpoints.usage.router import usage_router
from serve_app.gateway import Gateway
from serve_app.http import install_error_handlers


def build_api(gateway: Gateway) -> FastAPI:
    api = FastAPI(title="NeuroAPI", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(api)
    for router in (chat_router(gateway), messages_router(gateway), generate_router(gateway), embeddings_router(gateway),
                   models_router(gateway), usage_router(gateway), auth_router(gateway), keys_router(gateway),
                   account_router(gateway), billing_router(gateway), admin_scopes_router(gateway),
                   admin_limits_router(gateway), admin_finetunes_router(gateway), health_router(), docs_router()):
        api.include_router(router)
    return api
