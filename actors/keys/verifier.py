"""The key-verifier pool: the only processes that hold the pepper and read key records.

Besides checking keys it serves the account endpoints (``actors.accounts.service``): they mint
keys and sign session tokens, which needs the same key material. It is also where every other
deployment turns an email into an account and back, and where the export is read: an account's
email is sealed and its index keyed with that material (``actors.accounts.sealing``). Billing's
Stripe ids are sealed and indexed the same way, so the ingress (customers, webhooks) and the usage
reporter ask here too (``billing_*``, ``actors.billing.service.VerifierBillingIds``): the plaintext
ids leave only as answers to them. Domain errors come back as
``GatewayError`` values for the ingress to raise, Redis out of reach too (503 with Retry-After)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from actors.accounts.deletion import delete_account
from actors.accounts.export import export_account
from actors.accounts.passwords import PasswordError
from actors.accounts.service import AccountService
from actors.accounts.sessions import Session
from actors.accounts.sealing import AccountSealer
from actors.accounts.store import Account, AccountError, AccountExists
from actors.billing.reporter import Subscribed
from actors.billing.service import SealedBillingIds
from actors.accounts.work_budget import Busy
from actors.keys.limit_records import CeilingExceeded
from actors.keys.limit_settings import KeyLimits, LimitSettings
from actors.keys.material import ReplicaKeyMaterial
from actors.keys.store import KeyInfo, KeyStore, VerifiedKey
from config.secrets import load_key_material
from config.settings import Settings
from core.errors import GatewayError, busy, service_unavailable
from core.invalidation import InvalidationTimeout
from core.limits import LimitsError
from core.redis_conn import UNREACHABLE, connect

T = TypeVar("T")


def redis_down_is_503(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T | GatewayError]]:
    """Redis unreachable (after the client's retries): a 503 value with Retry-After, not a crash."""
    @functools.wraps(method)
    async def answer(self, *args):
        try:
            return await method(self, *args)
        except UNREACHABLE:
            return service_unavailable()
    return answer


def _limits_error(error: Exception) -> GatewayError:
    """How a refused or unconfirmed limits change answers (anything else propagates)."""
    if isinstance(error, CeilingExceeded):
        return GatewayError(403, f"{error}.", type="permission_error", code="above_operator_limit")
    if isinstance(error, LimitsError):
        return GatewayError(400, f"Invalid limits: {error}.", code="invalid_value")
    if isinstance(error, InvalidationTimeout):
        return GatewayError(503, "The limits are stored, but not every replica confirmed them in time; "
                            "send the same change again.", type="server_error", code="not_confirmed")
    raise error


class KeyVerifier:
    def __init__(self, settings: Settings, redis_url: str):
        # Reloaded in place when `neuroapi secrets rotate-*` adds a version (actors.keys.material).
        self._material = ReplicaKeyMaterial(lambda: load_key_material(settings)[0])
        self._material.listen(redis_url)
        self._redis = redis = connect(redis_url)
        self._keys = KeyStore(redis, self._material.crypto)
        self._accounts = AccountService(redis, self._material.current, password_rounds=settings.password_rounds,
                                        session_ttl_s=settings.session_ttl_s)
        self._billing = SealedBillingIds(redis, AccountSealer(self._material.current))
        self._limits = LimitSettings(redis)

    @redis_down_is_503
    async def verify(self, presented_key: str) -> VerifiedKey | None:
        return await self._keys.verify(presented_key)

    @redis_down_is_503
    async def signup(self, email: str, password: str) -> Account | GatewayError:
        try:
            return await self._accounts.signup(email, password)
        except PasswordError as error:
            return GatewayError(400, f"Invalid password: {error}.", code="invalid_password", param="password")
        except AccountExists as error:
            return GatewayError(409, f"Cannot sign up: {error}.", code="account_exists", param="email")
        except AccountError as error:
            return GatewayError(400, f"Cannot sign up: {error}.", code="invalid_email", param="email")
        except Busy:
            return busy("Too many sign-ups are being processed", "signup_busy")

    @redis_down_is_503
    async def login(self, email: str, password: str) -> tuple[str, Session] | GatewayError | None:
        try:
            return await self._accounts.login(email, password)
        except AccountError:  # not even an email: the same answer as a wrong password
            return None
        except Busy:
            return busy("Too many log-ins are being processed", "login_busy")

    @redis_down_is_503
    async def session(self, token: str) -> Session | None:
        return await self._accounts.session(token)

    @redis_down_is_503
    async def logout(self, token: str) -> bool:
        return await self._accounts.logout(token)

    @redis_down_is_503
    async def create_key(self, account_id: str, name: str) -> tuple[str, KeyInfo]:
        return await self._accounts.create_key(account_id, name)

    @redis_down_is_503
    async def list_keys(self, account_id: str) -> list[KeyInfo]:
        return await self._accounts.list_keys(account_id)

    @redis_down_is_503
    async def revoke_key(self, account_id: str, prefix: str) -> bool:
        return await self._accounts.revoke_key(account_id, prefix)

    @redis_down_is_503
    async def update_key_limits(self, account_id: str, prefix: str, changes: dict) -> KeyInfo | GatewayError:
        """An owner's change to one of its keys' limits (``PATCH /v1/keys/{prefix}``): the
        named fields, None clears one; in force on every replica when this returns."""
        try:
            await self._limits.update_own(account_id, prefix, changes, f"account:{account_id}")
        except LookupError:
            return GatewayError(404, f"This account has no key '{prefix}'.", code="key_not_found", param="prefix")
        except Exception as error:
            return _limits_error(error)
        return next(info for info in await self._accounts.list_keys(account_id) if info.prefix == prefix)

    @redis_down_is_503
    async def set_key_limits(self, prefix: str, changes: dict, actor: str) -> tuple[KeyLimits, int] | GatewayError:
        """An operator's limits for any key (the admin API): replaces them all; (the key's
        limits now, replicas that confirmed)."""
        try:
            return await self._limits.update_ceiling(prefix, changes, actor, clear=True)
        except LookupError as error:
            return GatewayError(404, f"{error}.", code="key_not_found", param="prefix")
        except Exception as error:
            return _limits_error(error)

    @redis_down_is_503
    async def set_account_budget(self, account_id: str, budget_micro: int | None, actor: str) -> int | GatewayError:
        """An operator's monthly budget for an account (None: none); replicas that confirmed."""
        try:
            return await self._limits.set_account_budget(account_id, budget_micro, actor)
        except AccountError as error:
            return GatewayError(404, f"{error}.", code="account_not_found", param="email")
        except Exception as error:
            return _limits_error(error)

    @redis_down_is_503
    async def delete_account(self, account_id: str, password: str) -> bool | GatewayError | None:
        """None for a wrong password; else deleted (its keys rejected on every replica once this
        returns, its sessions ended, its data queued for the next purge batch)."""
        try:
            if not await self._accounts.check_password(account_id, password):
                return None
        except Busy:
            return busy("Too many log-ins are being processed", "login_busy")
        return await delete_account(self._redis, account_id)

    @redis_down_is_503
    async def account_id_of(self, email: str) -> str | GatewayError:
        """The id of the account with this email (operators' tools: scopes, fine-tune owners)."""
        try:
            return await self._accounts.accounts.id_of(email)
        except AccountError as error:
            return GatewayError(404, f"{error}.", code="account_not_found", param="email")

    @redis_down_is_503
    async def email_of(self, account_id: str) -> str | GatewayError:
        """The account's email, opened (billing names the Stripe customer with it)."""
        try:
            return await self._accounts.accounts.email_of(account_id)
        except AccountError as error:
            return GatewayError(404, f"{error}.", code="account_not_found")

    @redis_down_is_503
    async def export_account(self, account_id: str) -> dict | GatewayError:
        """Everything held about the account (``actors.accounts.export``), its email opened."""
        try:
            return await export_account(self._redis, account_id, AccountSealer(self._material.current))
        except (LookupError, AccountError):
            return GatewayError(404, "No such account.", code="account_not_found")

    @redis_down_is_503
    async def billing_customer(self, account_id: str) -> str:
        """The account's Stripe customer id, opened ("" when it has none)."""
        return await self._billing.customer_id(account_id)

    @redis_down_is_503
    async def set_billing_customer(self, account_id: str, customer_id: str) -> None | GatewayError:
        """Record the account's Stripe customer, sealed and indexed."""
        try:
            return await self._billing.set_customer(account_id, customer_id)
        except AccountError as error:
            return GatewayError(404, f"{error}.", code="account_not_found")

    @redis_down_is_503
    async def apply_billing_event(self, event: dict) -> str | None:
        """A Stripe event the ingress verified, applied once (``actors.billing.webhooks.apply``):
        the account whose gating may have changed, for the ingress to broadcast."""
        return await self._billing.apply_event(event)

    @redis_down_is_503
    async def billing_subscribed(self) -> list[Subscribed]:
        """The accounts Stripe bills, their customer ids opened (the usage reporter's pass)."""
        return await self._billing.subscribed()

    async def record_key_uses(self, last_used: dict[str, int]) -> None:
        await self._accounts.record_key_uses(last_used)

    async def close(self) -> None:  # Serve calls it at shutdown (serve_app.app.as_replica)
        await self._material.stop()
        await self._redis.aclose()
