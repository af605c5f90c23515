"""The usage reporter as a deployment: one pass every ``billing_report_every_s``. Any number may
run (a replica per node, a restarted one): a pass takes the reporter's leader lock in Redis.

It holds no key material: the customer ids it sends to Stripe are sealed at rest, so each pass
asks the verifier pool for the subscribed accounts, their customer ids opened
(``actors.billing.service.VerifierBillingIds``)."""

from __future__ import annotations

import asyncio
import logging
import os

from typing import Any

from actors.billing.service import BillingService, VerifierBillingIds
from actors.billing.stripe_api import StripeBilling
from config.settings import STRIPE_SECRET_VARIABLE, Settings
from core.redis_conn import connect

logger = logging.getLogger("neuroapi.billing")


class BillingReporter:
    def __init__(self, settings: Settings, redis_url: str, verifier: Any):
        """``verifier``: a handle on the verifier pool (``.method.remote(...)``)."""
        self._redis = connect(redis_url)
        stripe = StripeBilling(os.environ[STRIPE_SECRET_VARIABLE], settings.stripe_api_base)
        self._billing = BillingService(settings, self._redis, stripe, ids=VerifierBillingIds(verifier))
        self._reporter = self._billing.reporter()
        self._every_s = settings.billing_report_every_s
        self._task = asyncio.get_running_loop().create_task(self._report_forever())

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            try:
                await self._reporter.report_once()
            except Exception as error:  # the next pass resumes from what Redis recorded
                logger.warning("billing: a usage report pass failed: %s", type(error).__name__)

    async def report_once(self) -> int:
        """One pass now (tests, operators): how many meter events Stripe accepted."""
        return sum(1 for sent in await self._reporter.report_once() if sent.outcome == "sent")

    async def close(self) -> None:  # Serve calls it at shutdown (serve_app.app.as_replica)
        self._task.cancel()
        await self._billing.aclose()
        await self._redis.aclose()
