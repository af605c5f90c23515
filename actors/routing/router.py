"""The mode router: owns the routing table (catalog x providers that are on) for the ingress,
and account scopes (``actors.routing.scope_service``), which operators change through it."""

from __future__ import annotations

from actors.accounts.store import AccountError
from actors.routing.scope_service import ScopeService
from actors.routing.table import RoutingTable, build_routing_table
from config.settings import Settings
from core.errors import GatewayError
from core.invalidation import InvalidationTimeout
from core.naming import IN_HOUSE_PROVIDER
from core.redis_conn import connect
from core.scope import Scope, ScopeError


class ModeRouter:
    def __init__(self, settings: Settings, enabled_providers: list[str], redis_url: str):
        self._table = build_routing_table(settings, enabled_providers)
        providers = set(settings.providers) | ({IN_HOUSE_PROVIDER} if settings.served_in_house() else set())
        self._redis = connect(redis_url)
        self._scopes = ScopeService(self._redis, providers)

    async def close(self) -> None:  # Serve calls it at shutdown (serve_app.app.as_replica)
        await self._redis.aclose()

    async def table(self) -> RoutingTable:
        return self._table

    async def scope(self, account_id: str) -> tuple[str, Scope] | GatewayError:
        """(account id, its scope). The admin API turns the email into the id at the verifier
        pool first: the email index is keyed with key material this deployment does not hold."""
        try:
            return await self._scopes.lookup(account_id)
        except AccountError as error:
            return GatewayError(404, f"{error}.", code="account_not_found", param="email")

    async def set_scope(self, account_id: str, scope: Scope, actor: str) -> tuple[str, int] | GatewayError:
        """(account id, replicas that confirmed) once every replica routes under ``scope``."""
        try:
            return await self._scopes.set(account_id, scope, actor)
        except AccountError as error:
            return GatewayError(404, f"{error}.", code="account_not_found", param="email")
        except ScopeError as error:
            return GatewayError(400, f"Invalid scope: {error}.", code="invalid_value", param="excluded_providers")
        except InvalidationTimeout:
            return GatewayError(503, "The scope is stored, but not every replica confirmed it in time; "
                                "send the same change again.", "server_error", "not_confirmed")
