"""``build_app()``: the NeuroAPI Serve application graph.

    Ingress ──▶ KeyVerifier pool        (on a key-cache miss only)
       │   ──▶ ModeRouter               (once, for the routing table)
       │   ──▶ MetadataBatcher          (metering records, one hop per batch of calls)
       ├──────▶ Provider-<name> proxies (one hop per request to a third party)
       └──────▶ Model-<name>            (one hop per request to an in-house model's replicas)

Only providers whose credential is set get a proxy; the others are not offered. In-house models
are resolved to a model folder here, in the driver (the built-in default is converted once)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ray.serve import Application

from actors.key_verifier import KeyVerifier
from actors.metadata_batcher import MetadataBatcher
from actors.mode_router import ModeRouter
from actors.provider_proxy import ProviderProxy
from config.catalog import Price
from config.settings import Settings
from models.deployment import InHouseModel, options_for
from models.model_source import resolve
from serve_app.ingress import Ingress


def prices_of(settings: Settings, model: str) -> dict[str, Price]:
    """An in-house model's price and the fine-tune prices ("ft:NAME") a replica may need."""
    return {name: price for name, price in settings.prices.items() if name == model or name.startswith("ft:")}


def build_app(settings: Settings, redis_url: str, environ: Mapping[str, str] | None = None) -> Application:
    enabled = settings.enabled_providers(os.environ if environ is None else environ)
    verifier = KeyVerifier.options(num_replicas=settings.verifier_replicas).bind(settings, redis_url)
    router = ModeRouter.bind(settings, enabled, redis_url)
    proxies = {
        f"Provider-{name}": ProviderProxy.options(
            name=f"Provider-{name}", num_replicas=settings.providers[name].replicas
        ).bind(name, settings.providers[name], {m: settings.prices[m] for m in settings.providers[name].models},
               settings.max_response_bytes)
        for name in enabled
    }
    models = {
        f"Model-{name}": InHouseModel.options(**options_for(name, spec)).bind(
            name, spec, str(resolve(spec.source, settings.models_dir)), prices_of(settings, name))
        for name, spec in settings.served_in_house().items()
    }
    batcher = MetadataBatcher.bind(settings, redis_url) if settings.metering else None
    return Ingress.options(num_replicas=settings.ingress_replicas).bind(
        settings, redis_url, verifier, router, proxies | models, batcher
    )
