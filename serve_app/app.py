"""``build_app()``: the NeuroAPI Serve application graph.

    Ingress ──▶ KeyVerifier pool        (on a key-cache miss only; billing's sealed Stripe ids)
       │   ──▶ ModeRouter               (once, for the routing table)
       │   ──▶ MetadataBatcher          (metering records, one hop per batch of calls)
       ├──────▶ Provider-<name> proxies (one hop per request to a third party)
       └──────▶ Model-<name>            (one hop per request to an in-house model's replicas)

Only providers whose credential is set get a proxy; the others are not offered. In-house models
are resolved to a model folder here, in the driver (the built-in default is converted once)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ray import serve
from ray.serve import Application

from actors.billing.reporter_deployment import BillingReporter
from actors.housekeeping import Housekeeping
from actors.keys.verifier import KeyVerifier
from actors.metering.batcher_deployment import MetadataBatcher
from actors.providers.proxy import ProviderProxy
from actors.routing.router import ModeRouter
from config.catalog import Price
from config.settings import Settings
from core import logs
from core.money import FINETUNE_PREFIX
from core.naming import model_deployment, provider_deployment
from models.deployment import InHouseModel, options_for
from models.model_source import resolve
from serve_app.ingress import Ingress
from serve_app.ray_metrics import metering_events

# Replicas that only wait on I/O hold no CPU; their Serve options live here, with the classes.
SMALL = {"ray_actor_options": {"num_cpus": 0}}


def as_replica(plain: type) -> type:
    """A plain deployment class as a Serve replica: its process's logs scrubbed (``core.logs``),
    and ``close`` awaited when Serve stops it (Serve awaits ``__del__``; the plain classes name it
    ``close``, so that neither a test nor the garbage collector is left an unawaited coroutine)."""
    def __init__(self, *args, **kwargs) -> None:
        logs.install(in_replica=True)
        plain.__init__(self, *args, **kwargs)

    async def __del__(self) -> None:
        await self.close()
    return type(plain.__name__, (plain,), {"__init__": __init__, "__del__": __del__})


def prices_of(settings: Settings, model: str) -> dict[str, Price]:
    """An in-house model's price and the fine-tune prices ("ft:NAME") a replica may need."""
    return {name: price for name, price in settings.prices.items()
            if name == model or name.startswith(FINETUNE_PREFIX)}


def build_app(settings: Settings, redis_url: str, environ: Mapping[str, str] | None = None) -> Application:
    environ = os.environ if environ is None else environ
    enabled = settings.enabled_providers(environ)
    verifier = serve.deployment(as_replica(KeyVerifier), max_ongoing_requests=256, **SMALL).options(
        num_replicas=settings.verifier_replicas).bind(settings, redis_url)
    router = serve.deployment(as_replica(ModeRouter), max_ongoing_requests=256, **SMALL).bind(settings, enabled, redis_url)
    proxy = serve.deployment(as_replica(ProviderProxy), max_ongoing_requests=2000, **SMALL)
    proxies = {
        provider_deployment(name): proxy.options(
            name=provider_deployment(name), num_replicas=settings.providers[name].replicas
        ).bind(name, settings.providers[name], {m: settings.prices[m] for m in settings.providers[name].models},
               settings.max_response_bytes)
        for name in enabled
    }
    models = {
        model_deployment(name): serve.deployment(InHouseModel).options(**options_for(name, spec)).bind(
            name, spec, str(resolve(spec.source, settings.models_dir)), prices_of(settings, name))
        for name, spec in settings.served_in_house().items()
    }
    batcher = serve.deployment(as_replica(MetadataBatcher), max_ongoing_requests=10000, **SMALL).bind(
        settings, redis_url, metering_events) if settings.metering else None
    # Periodic jobs, bound to the ingress only so that Serve starts them (nothing calls them):
    # the purge of deleted accounts and the retention windows; usage to Stripe.
    jobs = [serve.deployment(as_replica(Housekeeping), **SMALL).bind(settings, redis_url)]
    if settings.billing_enabled(environ):
        # The customer ids are sealed at rest: the reporter asks the verifier pool for them.
        jobs.append(serve.deployment(as_replica(BillingReporter), **SMALL).bind(settings, redis_url, verifier))
    ingress = serve.deployment(serve.ingress()(Ingress), name="Ingress", max_ongoing_requests=1000, **SMALL)
    return ingress.options(num_replicas=settings.ingress_replicas).bind(
        settings, redis_url, verifier, router, proxies | models, batcher, jobs
    )
