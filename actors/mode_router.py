"""The mode router: owns the routing table (catalog x providers that are on) for the ingress."""

from __future__ import annotations

from ray import serve

from actors.routing import RoutingTable, build_routing_table
from config import logs
from config.settings import Settings


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class ModeRouter:
    def __init__(self, settings: Settings, enabled_providers: list[str]):
        logs.install(in_replica=True)
        self._table = build_routing_table(settings, enabled_providers)

    async def table(self) -> RoutingTable:
        return self._table
