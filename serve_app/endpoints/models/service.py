"""What ``GET /v1/models`` lists: the modes and models a caller's scope may use, each with what it
can do beyond plain text (``core.capabilities``) and, for a model, its context window; an embedding
model says ``"embeddings": true`` (and its vectors' length when the catalog knows it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.routing.table import RoutingTable
from config.catalog import EMBED
from config.settings import Settings
from core.scope import Scope


def model_entry(table: RoutingTable, settings: Settings, engines: Mapping[str, str], name: str,
                scope: Scope) -> dict[str, Any]:
    """OpenAI's model object, plus NeuroAPI's fields. A mode's capabilities are those at least one
    candidate the scope allows has: a request using one is routed to such a candidate."""
    backend = table.models.get(name)
    if backend is None:  # a mode
        candidates = [c.backend for c in table.modes.get(name, ()) if scope.allows(c.backend.provider, c.backend.in_house)]
        able = set().union(*(b.capabilities for b in candidates)) if candidates else set()
        return {"id": name, "object": "model", "created": 0, "owned_by": "neuroapi", "mode": True,
                "capabilities": sorted(able)}
    entry: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": backend.provider,
                             "capabilities": sorted(backend.capabilities),
                             "context_length": settings.card(name).context_length}
    if backend.task == EMBED:  # POST /v1/embeddings only; a provider's card knows its vectors' length
        entry["embeddings"] = True
        if settings.card(name).dimensions is not None:
            entry["dimensions"] = settings.card(name).dimensions
    if backend.in_house:
        entry["in_house"] = True
        if name in engines:
            entry["engine"] = engines[name]
    return entry


def model_list(table: RoutingTable, settings: Settings, engines: Mapping[str, str], scope: Scope) -> dict[str, Any]:
    return {"object": "list", "data": [model_entry(table, settings, engines, name, scope)
                                       for name in table.listing(scope)]}
