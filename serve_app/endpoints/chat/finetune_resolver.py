"""``model: "ft:NAME"`` → the live version of that fine-tune, for this caller.

Each ingress replica caches what it read from the registry; a deploy, rollback or retire
broadcasts on ``FINETUNES_TOPIC`` and every replica drops the entry before the command
returns, so the next request sees the change (no restart, no grace period). A fine-tune owned
by another account is answered exactly like one that does not exist."""

from __future__ import annotations

from core.errors import model_not_found
from core.money import FINETUNE_PREFIX
from finetunes.registry import FineTune, FineTuneRegistry


class FineTuneResolver:
    def __init__(self, registry: FineTuneRegistry):
        self._registry = registry
        self._live: dict[str, FineTune | None] = {}
        self._generation = 0  # bumped by every invalidation: a read that raced one is not cached

    async def resolve(self, model: str, account_id: str, use_cache: bool = True,
                      fill_cache: bool | None = None) -> FineTune:
        """``use_cache``: what is cached may be served; ``fill_cache`` (default: the same): a
        registry read may be cached. The ingress serves the cache through a short Redis outage
        but fills it only while it hears invalidations (``core.invalidation``)."""
        name = model.removeprefix(FINETUNE_PREFIX)
        fill_cache = use_cache if fill_cache is None else fill_cache
        if use_cache and name in self._live:
            live = self._live[name]
        else:
            generation = self._generation
            live = await self._registry.live(name)
            if fill_cache and generation == self._generation:
                self._live[name] = live
        if live is None or (live.owner_account and live.owner_account != account_id):
            raise model_not_found(model)
        return live

    def invalidate(self, name: str) -> None:
        self._generation += 1
        self._live.pop(name, None)

    def clear(self) -> None:
        self._generation += 1
        self._live.clear()
