"""The mode router: owns the routing table (catalog x providers that are on) for the ingress,
and account scopes (``actors.scopes``), which operators change through it."""

from __future__ import annotations

from ray import serve

from actors.accounts import AccountError, AccountStore
from actors.errors import GatewayError
from actors.invalidation import InvalidationTimeout
from actors.redis_conn import connect
from actors.routing import IN_HOUSE_PROVIDER, RoutingTable, build_routing_table
from actors.scopes import Scope, ScopeError, ScopeStore, checked
from config import logs
from config.settings import Settings


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class ModeRouter:
    def __init__(self, settings: Settings, enabled_providers: list[str], redis_url: str):
        logs.install(in_replica=True)
        self._table = build_routing_table(settings, enabled_providers)
        self._providers = set(settings.providers) | ({IN_HOUSE_PROVIDER} if settings.served_in_house() else set())
        redis = connect(redis_url)
        self._accounts, self._scopes = AccountStore(redis), ScopeStore(redis)

    async def table(self) -> RoutingTable:
        return self._table

    async def scope(self, email: str) -> tuple[str, Scope] | GatewayError:
        """(account id, its scope)."""
        try:
            account = await self._accounts.require(email)
        except AccountError as error:
            return GatewayError(404, f"{error}.", code="account_not_found", param="email")
        return account.id, await self._scopes.get(account.id)

    async def set_scope(self, email: str, scope: Scope, actor: str) -> tuple[str, int] | GatewayError:
        """(account id, replicas that confirmed) once every replica routes under ``scope``."""
        try:
            account = await self._accounts.require(email)
            confirmed = await self._scopes.set(account.id, checked(scope, self._providers), actor)
        except AccountError as error:
            return GatewayError(404, f"{error}.", code="account_not_found", param="email")
        except ScopeError as error:
            return GatewayError(400, f"Invalid scope: {error}.", code="invalid_value", param="excluded_providers")
        except InvalidationTimeout:
            return GatewayError(503, "The scope is stored, but not every replica confirmed it in time; "
                                "send the same change again.", "server_error", "not_confirmed")
        return account.id, confirmed
