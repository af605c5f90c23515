"""A key's limits applied to one model call: the allow-list first, then the call's worst case
reserved before anything is sent upstream, then its real usage settled once it has ended.

The worst case can never be below what the call will really cost, or concurrent calls could
overshoot a budget: its prompt is bounded by one token per byte of text (a byte-level BPE
token covers at least one byte) plus ``IMAGE_TOKENS`` per image, its completion by the
caller's ``max_tokens``, else by what the backend would allow (the in-house model's default,
what NeuroAPI sends Anthropic, else the model's whole context window). It is priced at the
dearest candidate the call may reach. A caller who sets ``max_tokens`` reserves less."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any

from actors.limits.store import LimitStore, Refused, Reserved
from actors.routing.table import ENGINE_WIRE, Backend
from config.settings import Settings
from core.errors import GatewayError
from core.limits import Limits, retry_after_text
from core.money import cost_micro_units, cost_units_text, price_for

logger = logging.getLogger("neuroapi.limits")
IMAGE_TOKENS = 25_000  # above any provider's count for one image (OpenAI's most detailed tiles included)
UNKNOWN_CONTEXT = 1_000_000  # a model without a card: as long as any model's window


def model_not_allowed(limits: Limits, name: str) -> GatewayError:
    allowed = ", ".join(sorted(limits.models or ()))
    return GatewayError(403, f"This key may only call {allowed} (its model allow-list); '{name}' is not one of "
                             "them.", "permission_error", "model_not_allowed", "model")


def check_model(limits: Limits, model: str, mode: str | None) -> None:
    """The allow-list names what a caller may ask for: a mode, or a model."""
    if limits.models is None or limits.allows_model(model) or (mode is not None and limits.allows_model(mode)):
        return
    raise model_not_allowed(limits, mode or model)


def _text_bytes(value: Any) -> tuple[int, int]:
    """(UTF-8 bytes of the text, images) in a chat body's messages or tools."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")), 0
    if isinstance(value, dict):
        if value.get("type") == "image_url":
            return 0, 1
        totals = [_text_bytes(item) for item in value.values()]
    elif isinstance(value, list):
        totals = [_text_bytes(item) for item in value]
    else:
        return len(json.dumps(value)), 0
    return sum(t for t, _ in totals), sum(i for _, i in totals)


def prompt_bound(body: dict[str, Any]) -> int:
    text, images = _text_bytes([body.get("messages") or [], body.get("tools") or []])
    return text + IMAGE_TOKENS * images


class LimitGate:
    def __init__(self, store: LimitStore, settings: Settings):
        self._store = store
        self._settings = settings
        self._settling: set[asyncio.Task] = set()  # settles in flight (a task needs a reference)

    def _completion_bound(self, backend: Backend, body: dict[str, Any]) -> int:
        """The most the call's completions may hold: each of its ``n`` choices."""
        return self._choice_bound(backend, body) * int(body.get("n") or 1)

    def _choice_bound(self, backend: Backend, body: dict[str, Any]) -> int:
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        if asked:
            return int(asked)
        if backend.wire == ENGINE_WIRE or backend.finetune is not None:
            spec = self._settings.in_house_models.get(backend.model)
            if spec is not None:
                return spec.default_max_tokens
        if backend.wire == "anthropic":
            return self._settings.providers[backend.provider].default_max_tokens
        return self._settings.card(backend.model).context_length or UNKNOWN_CONTEXT

    def worst_case(self, body: dict[str, Any], order: Iterable[Backend]) -> tuple[int, int]:
        """(tokens, micro cost_units) the call may use at most, over the backends it may reach."""
        prompt, tokens, cost = prompt_bound(body), 0, 0
        for backend in order:
            completion = self._completion_bound(backend, body)
            tokens = max(tokens, prompt + completion)
            price = price_for(self._settings.prices, backend.model,
                              backend.finetune.price_name if backend.finetune else "")
            if price is not None:
                cost = max(cost, cost_micro_units(price, prompt, completion))
        return tokens, cost

    def price(self, model: str) -> Any:
        return price_for(self._settings.prices, model)

    async def reserve(self, limits: Limits, key_prefix: str, account_id: str, request_id: str,
                      tokens: int, cost_micro: int) -> Reserved | None:
        """The call's reservation of its worst case (None for a key without counted limits);
        raises the caller's 429."""
        if not limits.counted():
            return None
        result = await self._store.reserve(key_prefix, account_id, limits, tokens, cost_micro, request_id)
        if isinstance(result, Refused):
            raise refusal(result)
        return result

    def settle(self, reserved: Reserved | None, tokens: int, cost_micro: int) -> None:
        """Counts the call's real usage, off the caller's path (a failed settle leaves the
        reservation to expire: the budget is held a while longer, never overshot)."""
        if reserved is None:
            return
        task = asyncio.get_running_loop().create_task(self._settle(reserved, tokens, cost_micro))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, reserved: Reserved, tokens: int, cost_micro: int) -> None:
        try:
            await self._store.settle(reserved, tokens, cost_micro)
        except Exception as error:  # Redis away: the reservation expires instead
            logger.warning("settling %s failed: %s", reserved.key_prefix, type(error).__name__)


def refusal(refused: Refused) -> GatewayError:
    """OpenAI's answers: ``rate_limit_exceeded`` for RPM/TPM, ``insufficient_quota`` for a budget."""
    headers = refused.headers.as_headers()
    if refused.retry_after_s is not None:
        headers["Retry-After"] = retry_after_text(refused.retry_after_s)
    if refused.kind in ("rpm", "tpm"):
        what = "requests" if refused.kind == "rpm" else "tokens"
        message = f"Rate limit reached for this key: {what} per minute. Retry after the time in Retry-After."
        if refused.retry_after_s is None:
            message = f"This request alone needs more {what} than this key's per-minute limit allows."
        return GatewayError(429, message, "requests", "rate_limit_exceeded", headers=headers)
    owner = "this key" if refused.kind == "key_budget" else "this key's account"
    budget = cost_units_text(refused.budget_micro or 0)
    left = cost_units_text(refused.left_micro or 0)
    return GatewayError(429, f"This request could cost more than is left of the monthly budget of {owner} "
                             f"({left} of {budget} cost_units). Lower max_tokens, or raise the budget.",
                        "insufficient_quota", "insufficient_quota", headers=headers)
