"""Routing decisions, as plain functions over a routing table.

The mode router deployment owns the table (the catalog filtered to the providers that are on)
and hands it to ingress replicas, which decide per request without a hop: resolve the name the
caller asked for, drop candidates the account's scope forbids, then those that cannot honour the
request's parameters, and order the rest (first attempt drawn by weight, weight-0 candidates
kept as fallbacks in listed order). Every attempt, fallback or retry comes from that order, so
a backend the scope forbids is never contacted."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from actors.providers import ADAPTERS
from config.catalog import CHAT, EMBED
from config.settings import Settings
from core import capabilities
from core.backend import LoraAdapter
from core.errors import GatewayError, model_not_found
from core.errors import scope_forbids as core_scope_forbids
from core.money import FINETUNE_PREFIX
from core.naming import IN_HOUSE_PROVIDER, model_deployment, provider_deployment
from core.scope import UNRESTRICTED, Scope
from models.openai_format import unsupported as in_house_unsupported

ENGINE_WIRE = "engine"  # an in-house model deployment speaks our own protocol
FINETUNE_WIRE = "finetune"  # "ft:NAME" before the call resolves it to its base model + LoRA adapter


@dataclass(frozen=True, slots=True)
class Backend:
    model: str
    provider: str
    wire: str  # what its deployment speaks: a provider adapter's name (``ADAPTERS``), ENGINE_WIRE or FINETUNE_WIRE
    in_house: bool = False
    finetune: LoraAdapter | None = None  # set once a fine-tune resolved to its base model's backend
    capabilities: frozenset[str] = frozenset()  # beyond plain text (``core.capabilities``); a fine-tune has its base's
    task: str = CHAT  # config.catalog's: "chat" (chat endpoints) or "embed" (POST /v1/embeddings only)

    @property
    def deployment(self) -> str:
        """The Serve deployment that serves it: one per provider, one per in-house model."""
        return model_deployment(self.model) if self.wire == ENGINE_WIRE else provider_deployment(self.provider)


def unsupported(backend: Backend, body: dict[str, Any]) -> str | None:
    """Why ``backend`` cannot honour the request as asked: a capability its model lacks, or a
    parameter its provider's API does not take. An unresolved fine-tune is checked once it is
    resolved to its base model (``ModelCalls``)."""
    if backend.wire == FINETUNE_WIRE:
        return None
    name = backend.finetune.price_name if backend.finetune and backend.finetune.price_name else backend.model
    reason = capabilities.lacking(backend.capabilities, body, name)
    if reason is not None:
        return reason
    if backend.wire == ENGINE_WIRE:
        return in_house_unsupported(body)
    return ADAPTERS[backend.wire].unsupported(body)


def takes_native(backend: Backend) -> bool:
    """Whether the backend takes a ``/v1/messages`` caller's own Anthropic body unchanged."""
    return backend.wire == "anthropic"


def finetune_backend(model: str) -> Backend:
    """A fine-tune named by a caller or a mode, to be resolved per call (``FineTuneResolver``)."""
    return Backend(model, IN_HOUSE_PROVIDER, FINETUNE_WIRE, in_house=True)


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    backend: Backend
    weight: float


@dataclass(frozen=True, slots=True)
class Route:
    mode: str | None  # None when the caller named a model
    candidates: tuple[WeightedBackend, ...]


@dataclass(frozen=True)
class RoutingTable:
    modes: dict[str, tuple[WeightedBackend, ...]]  # only modes with something available
    models: dict[str, Backend]  # only models whose provider is on
    catalog_names: frozenset[str]  # every mode and model the catalog knows

    def resolve(self, model: str, mode: str | None = None) -> Route:
        if mode is not None:
            candidates = self._mode(mode, param="mode")
            if model == mode:
                return Route(mode, candidates)
            pinned = tuple(c for c in candidates if c.backend.model == model)
            if not pinned:
                raise GatewayError(
                    400,
                    f"'model' must be the mode's name or one of its models when 'mode' is "
                    f"given; '{model}' is not in mode '{mode}'.",
                    code="model_not_in_mode", param="model",
                )
            return Route(mode, pinned)
        if model in self.models:
            return Route(None, (WeightedBackend(self.models[model], 1.0),))
        if model.startswith(FINETUNE_PREFIX):
            return Route(None, (WeightedBackend(finetune_backend(model), 1.0),))
        return Route(model, self._mode(model, param="model"))

    def with_adapter(self, model: str, base_model: str, adapter: LoraAdapter) -> Backend:
        """The backend that serves fine-tune ``model``: its base model's replicas, with ``adapter``."""
        backend = self.models.get(base_model)
        if backend is None or backend.wire != ENGINE_WIRE:
            raise GatewayError(404, f"'{model}' is not available on this gateway: its base model "
                               f"'{base_model}' is not served here.", code="model_not_available", param="model")
        return replace(backend, finetune=adapter)

    def _mode(self, name: str, param: str) -> tuple[WeightedBackend, ...]:
        if name in self.modes:
            return self.modes[name]
        if name in self.catalog_names:
            raise GatewayError(
                404,
                f"'{name}' is not available on this gateway: no provider that serves it is "
                "configured. GET /v1/models lists what you can use.",
                code="model_not_available", param=param,
            )
        raise model_not_found(name, param)

    def listing(self, scope: Scope = UNRESTRICTED) -> list[str]:
        """What an account with ``scope`` may call: modes with an allowed candidate, allowed models."""
        modes = [name for name, candidates in self.modes.items()
                 if any(_allowed(scope, c.backend) for c in candidates)]
        models = [name for name, backend in self.models.items() if _allowed(scope, backend)]
        return sorted(modes) + sorted(models)


def _allowed(scope: Scope, backend: Backend) -> bool:
    return scope.allows(backend.provider, backend.in_house)


def scope_forbids(scope: Scope, route: Route) -> GatewayError:
    return core_scope_forbids(scope.rule(), route.mode or route.candidates[0].backend.model)


def build_routing_table(settings: Settings, enabled_providers: Iterable[str]) -> RoutingTable:
    enabled = set(enabled_providers)
    models = {
        model: Backend(model, name, provider.adapter, provider.in_house,
                       capabilities=frozenset(settings.card(model).supports), task=settings.card(model).task)
        for name, provider in settings.providers.items()
        if name in enabled
        for model in provider.models
    }
    models |= {model: Backend(model, IN_HOUSE_PROVIDER, ENGINE_WIRE, in_house=True, capabilities=spec.capabilities,
                              task=spec.task)
               for model, spec in settings.served_in_house().items()}
    modes = {}
    for name, mode in settings.modes.items():
        available = tuple(
            WeightedBackend(finetune_backend(c.model) if c.model.startswith(FINETUNE_PREFIX) else models[c.model],
                            c.weight)
            for c in mode.candidates if c.model in models or c.model.startswith(FINETUNE_PREFIX)
        )
        if available:
            modes[name] = available
    names = (frozenset(settings.modes) | {m for p in settings.providers.values() for m in p.models}
             | set(settings.in_house_models))
    return RoutingTable(modes, models, names)


def attempt_order(route: Route, body: dict[str, Any], rng: random.Random,
                  scope: Scope = UNRESTRICTED, check: Callable[[Backend], str | None] | None = None) -> list[Backend]:
    """The backends to try, in order. Raises 403 if the scope allows none of them, 400 if none
    that it allows can honour the request as asked (``check``: why a backend cannot; by default
    ``unsupported`` for ``body``)."""
    allowed = [c for c in route.candidates if _allowed(scope, c.backend)]
    if not allowed:
        raise scope_forbids(scope, route)
    chat = [c for c in allowed if c.backend.task == CHAT]  # a mode may list an embedding model by mistake
    if not chat:
        model = route.mode or allowed[0].backend.model
        raise GatewayError(400, f"'{model}' is an embedding model: it answers POST /v1/embeddings, not chat "
                                "requests. GET /v1/models lists the chat models.", code="model_not_chat", param="model")
    able: list[WeightedBackend] = []
    reasons: list[str] = []
    for candidate in chat:
        reason = check(candidate.backend) if check is not None else unsupported(candidate.backend, body)
        if reason is None:
            able.append(candidate)
        elif reason not in reasons:
            reasons.append(reason)
    if not able:
        raise GatewayError(400, "Unsupported parameter: " + "; ".join(reasons) + ".",
                           code="unsupported_parameter")
    # Efraimidis-Spirakis: sorting by u^(1/w) draws a weighted order in one pass.
    weighted = sorted(
        (c for c in able if c.weight > 0),
        key=lambda c: rng.random() ** (1.0 / c.weight),
        reverse=True,
    )
    return [c.backend for c in weighted] + [c.backend for c in able if c.weight == 0]


def embedding_backend(table: RoutingTable, model: str, scope: Scope = UNRESTRICTED) -> Backend:
    """The backend that embeds for ``model``. Only a model named outright: a mode's fallback would
    answer with another model's vectors, which cannot be compared with the first's. Raises 404 for
    an unknown or unavailable name, 403 when the scope forbids it (as chat does), 400 for a chat
    model or a mode."""
    route = table.resolve(model)
    allowed = [c.backend for c in route.candidates if _allowed(scope, c.backend)]
    if not allowed:
        raise scope_forbids(scope, route)
    if route.mode is not None or allowed[0].task != EMBED:
        kind = "a mode" if route.mode is not None else "a chat model"
        raise GatewayError(400, f"'{model}' is {kind}, not an embedding model. GET /v1/models lists the "
                                "embedding models (\"embeddings\": true).", code="model_not_embedding", param="model")
    return allowed[0]
