"""The ML team's workflow, shared by the ``neuroapi finetunes`` CLI and the admin API: deploy a
PEFT folder onto a base model (validate, copy into the artifact store, register, make live),
list, show, roll back, retire.

Validation runs before anything changes: a bad adapter leaves the registry, the store and every
replica exactly as they were."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from config.settings import Settings
from finetunes.artifact import ArtifactError, validate_adapter
from finetunes.registry import FineTune, FineTuneRegistry, RegistryError, check_name
from finetunes.store import ArtifactStore
from models.model_source import resolve


class DeployError(ValueError):
    """Why a deploy was refused; ``where`` says which input is at fault."""

    def __init__(self, message: str, where: str = ""):
        super().__init__(message)
        self.where = where


# An owner's email → its account id; raises ValueError (with a message for the operator) when
# there is no such account. Accounts live in ``actors``, which this package does not import.
OwnerLookup = Callable[[str], Awaitable[str]]


class FineTuneService:
    def __init__(self, settings: Settings, redis: aioredis.Redis, owner_of: OwnerLookup):
        self._settings = settings
        self._owner_of = owner_of
        self._redis = redis
        self.registry = FineTuneRegistry(redis)
        self._store = ArtifactStore(settings.finetune_store)

    async def deploy(self, folder: Path, base: str, name: str, owner_email: str | None, actor: str,
                     progress: bool = False) -> FineTune:
        try:
            check_name(name)
        except RegistryError as error:
            raise DeployError(str(error), "--name") from None
        spec = self._settings.in_house_models.get(base)
        if spec is None:
            known = ", ".join(self._settings.in_house_models) or "none"
            raise DeployError(f"'{base}' is not an in-house model of the catalog (in-house models: {known})", "--base")
        if spec.max_lora_rank == 0:
            raise DeployError(f"'{base}' replicas run without LoRA (max_lora_rank: 0 in the catalog)", "--base")
        owner = None
        if owner_email:
            try:
                owner = await self._owner_of(owner_email)
            except ValueError as error:
                raise DeployError(f"{error}", "--account") from None
        base_folder = await asyncio.to_thread(resolve, spec.source, self._settings.models_dir, progress)
        base_config = json.loads((base_folder / "config.json").read_text())
        try:
            info = await asyncio.to_thread(validate_adapter, folder, base, base_config, spec.max_lora_rank,
                                           self._settings.finetune_max_bytes)
        except ArtifactError as error:
            raise DeployError(str(error), error.where) from None
        version = await self.registry.next_version(name)
        path = await asyncio.to_thread(self._store.put, folder, name, version, info.digest, progress)
        await self.registry.add(FineTune(
            name=name, version=version, base_model=base, digest=info.digest, artifact_path=str(path),
            owner_account=owner, state="staged", deployed_by=actor, deployed_at_ms=int(time.time() * 1000),
            rank=info.rank))
        return await self.registry.make_live(name, version, actor)

    async def rollback(self, name: str, actor: str) -> FineTune:
        return await self.registry.rollback(name, actor)

    async def retire(self, name: str, actor: str) -> FineTune:
        return await self.registry.retire(name, actor)

    async def show(self, name: str) -> list[FineTune]:
        versions = await self.registry.versions(name)
        if not versions:
            raise RegistryError(f"no fine-tune named '{name}'")
        return versions

    async def listing(self) -> list[tuple[str, FineTune | None]]:
        """Every name with its live version (None once retired)."""
        return [(name, await self.registry.live(name)) for name in await self.registry.names()]
