"""One ingress replica's state, as a plain object the routers share: who is calling, the routing
table, the chat service, the record shipper, the caches and what invalidates them.

It is built over handles (``.method.remote(...)``): Ray deployment handles in the Serve shell
(``serve_app.ingress``), in-process objects in tests (``tests.support.local_handle``)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from actors.accounts.store import AccountError
from actors.accounts.throttle import SignupThrottle
from actors.billing.service import BILLING_TOPIC, BillingService, VerifierBillingIds
from actors.billing.stripe_api import StripeBilling
from actors.keys.store import KEYS_TOPIC
from actors.limits.gate import LimitGate
from actors.limits.store import LimitStore
from actors.metering.record import CallRecord
from actors.metering.shipper import RecordShipper
from actors.metering.spill import SpillFiles
from actors.metering.usage_store import UsageStore
from actors.routing.scopes import ACCOUNT_TOPIC
from config.settings import STRIPE_SECRET_VARIABLE, STRIPE_WEBHOOK_SECRET_VARIABLE, Settings
from core.errors import GatewayError
from core.invalidation import InvalidationListener
from core.naming import in_house_model_of
from core.redis_conn import connect
from finetunes.registry import FINETUNES_TOPIC, FineTuneRegistry
from finetunes.service import FineTuneService
from serve_app.callers.admin_token import read_admin_token
from serve_app.callers.authenticator import Authenticator
from serve_app.callers.billing_gate import BillingGate
from serve_app.callers.client_address import parse_networks
from serve_app.callers.guard import BLOCKS_TOPIC, FailedAuthGuard
from serve_app.callers.key_cache import VerifiedKeyCache
from serve_app.callers.verifier_calls import RaisingHandle
from serve_app.endpoints.chat.fallback import Backends
from serve_app.endpoints.chat.finetune_resolver import FineTuneResolver
from serve_app.endpoints.chat.service import ChatService
from serve_app.endpoints.embeddings.service import EmbeddingService
from serve_app.endpoints.generate.service import GenerateService
from serve_app.endpoints.messages.service import MessagesService
from serve_app.endpoints.model_calls import ModelCalls

LIMITS_POOL = 64  # Redis connections per ingress replica for limit checks
logger = logging.getLogger("neuroapi.ingress")


class Gateway:
    def __init__(self, settings: Settings, redis_url: str, verifier: Any, router: Any, backends: Backends,
                 batcher: Any | None, engine_handles: Mapping[str, Any] | None = None,
                 observe_gateway_ms: Callable[[float, bool], None] = lambda ms, stream: None):
        """Call ``start()`` (it fetches the routing table) before serving."""
        self.settings = settings
        self.body_limits = (settings.max_body_bytes, settings.client_body_timeout_s)
        self.chat_body_limits = (settings.max_chat_body_bytes, settings.client_body_timeout_s)
        self.redis = connect(redis_url)
        self.router = router
        self.verifier = RaisingHandle(verifier)  # its GatewayError values raised; Redis away = 503
        self.observe_gateway_ms = observe_gateway_ms
        self.signups = SignupThrottle(self.redis, settings.signup_limit, settings.signup_window_s)
        self.usage = UsageStore(self.redis)
        # Keys' limits (issue 19): a pool of their own that waits for a free connection under a
        # burst, and reservations that outlive the longest call, so a settle never finds one gone.
        self._limits_redis = connect(redis_url, pool_size=LIMITS_POOL)
        self.limit_store = LimitStore(self._limits_redis, reservation_ttl_s=settings.request_deadline_s + 120)
        self.limits = LimitGate(self.limit_store, settings)
        self.finetune_service = FineTuneService(settings, self.redis, self._owner_of)
        self.listener = InvalidationListener(redis_url, self._invalidate, self._forget_everything,
                                             settings.cache_outage_serve_s)
        guard = FailedAuthGuard(self.redis, parse_networks(settings.trusted_proxies),
                                settings.failed_auth_limit, settings.failed_auth_window_s)
        # The admin API is on only with a long enough token in this replica's environment (never in config).
        self.callers = Authenticator(self.verifier, guard, VerifiedKeyCache(), self.listener,
                                     read_admin_token(os.environ))
        self._finetunes = FineTuneResolver(FineTuneRegistry(self.redis))
        # Unshipped records are also on disk, in the batcher's spill folder: a killed replica's are replayed.
        self._records = RecordShipper(batcher, wal=SpillFiles(settings.metering_spill_dir))
        self._backends = backends
        self._engine_handles = dict(engine_handles or {})
        self.engines: dict[str, str] = {}  # in-house model → the engine serving it, once known
        # Billing is on with a Stripe key in this replica's environment (never in settings).
        self.billing: BillingService | None = None
        self.billing_gate: BillingGate | None = None
        if settings.billing_enabled(os.environ):
            stripe = StripeBilling(os.environ[STRIPE_SECRET_VARIABLE], settings.stripe_api_base)
            # The email and the Stripe ids are sealed at rest: the verifier pool opens them.
            self.billing = BillingService(settings, self.redis, stripe, os.environ.get(STRIPE_WEBHOOK_SECRET_VARIABLE, ""),
                                          ids=VerifierBillingIds(self.verifier), email_of=self.verifier.email_of.remote)
            self.billing_gate = BillingGate(self.billing.store, self.usage, self.billing.free_micro,
                                            settings.billing_past_due_grace_s,
                                            cache_usable=lambda: self.listener.cache_usable)
        self._tasks: list[asyncio.Task] = []
        self.table = None
        self.calls: ModelCalls | None = None
        self.chat: ChatService | None = None
        self.messages: MessagesService | None = None
        self.generate: GenerateService | None = None

    async def start(self) -> Gateway:
        self.table = await self.router.table.remote()
        limits = self.limits
        self.calls = ModelCalls(self.table, self._backends, self._resolve_finetune, self.record,
                                self.settings.prices, self.settings.request_deadline_s,
                                gate=self.billing_gate.check if self.billing_gate else None, limits=limits)
        self.chat = ChatService(self.calls)
        self.generate = GenerateService(self.calls)
        self.messages = MessagesService(self.calls)
        self.embeddings = EmbeddingService(self.table, self._backends, self.record, self.settings.prices, self.settings.card,
                                           self.settings.request_deadline_s, self.billing_gate.check if self.billing_gate else None,
                                           limits=limits)
        self._records.start()
        self.listener.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.callers.flush_key_uses_forever()), loop.create_task(self._learn_engines())]
        return self

    def record(self, record: CallRecord) -> None:
        self._records.add(record)  # to the metadata batcher in batches, off the request's path
        if self.billing_gate is not None and record.account_id:
            self.billing_gate.spent(record.account_id, record.cost_micro_units)

    async def _owner_of(self, email: str) -> str:
        """A fine-tune owner's account id. Emails are indexed with key material, which only the
        verifier pool holds: it answers (``finetunes.service.OwnerLookup``)."""
        try:
            return await self.verifier.account_id_of.remote(email)
        except GatewayError as error:
            if error.code == "account_not_found":
                raise AccountError(error.message.rstrip(".")) from None
            raise

    async def _resolve_finetune(self, model: str, account_id: str):
        return await self._finetunes.resolve(model, account_id, self.listener.cache_usable, self.listener.healthy)

    def _forget_everything(self) -> None:
        self.callers.keys.clear()
        self._finetunes.clear()
        if self.billing_gate is not None:
            self.billing_gate.clear()

    def _invalidate(self, topic: str, subject: str) -> None:
        if topic == FINETUNES_TOPIC:
            self._finetunes.invalidate(subject)
        elif topic == KEYS_TOPIC:
            self.callers.keys.invalidate(subject)
        elif topic == ACCOUNT_TOPIC:
            self.callers.keys.invalidate_account(subject)
        elif topic == BLOCKS_TOPIC:
            self.callers.guard.block(subject)
        elif topic == BILLING_TOPIC and self.billing_gate is not None:
            self.billing_gate.invalidate(subject)

    async def _learn_engines(self) -> None:
        """For /v1/models; asked in the background so the ingress never waits for a model to load."""
        for deployment, handle in self._engine_handles.items():
            model = in_house_model_of(deployment)
            if model is None:
                continue
            try:
                self.engines[model] = await handle.engine_name.remote()
            except Exception as error:
                logger.warning("could not learn the engine of %s: %s", deployment, type(error).__name__)

    async def close(self) -> None:
        await self._records.aclose()  # a graceful stop loses no record
        for task in self._tasks:
            task.cancel()
        await self.listener.stop()
        await self.redis.aclose()
        await self._limits_redis.aclose()
