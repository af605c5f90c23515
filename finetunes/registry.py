"""Which fine-tunes exist, and which version of each answers: the registry in Redis.

A name has numbered versions (allocated by INCR, never reused), each staged, live or retired;
at most one is live, and the name resolves to it. Deploy makes a version live, rollback returns
to the version that was live before it (a history of live versions, so rolling back twice goes
back twice), retire takes the name out of service. Each change commits in one MULTI together with
its entry in the audit stream (who, what, when), then every replica that caches the live version
is told to drop it and confirms (``core.invalidation.broadcast``) before the call returns.
The registry keeps metadata only; the files are in ``finetunes.store``.

Keys: ``neuroapi:ft:<name>:v<version>`` (a hash per version), ``…:live`` (the live version),
``…:history`` (a list of live versions, newest last), ``…:versions`` (a sorted set),
``…:seq`` (the version counter), and ``neuroapi:ft:names`` (a set)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from core.audit import AUDIT_MAX_ENTRIES, AUDIT_STREAM, audit_fields
from core.invalidation import broadcast

FINETUNES_TOPIC = "finetunes"  # subject: a fine-tune name whose cached live version must be dropped
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
NAMES_KEY = "neuroapi:ft:names"
HISTORY_MAX = 100  # live versions remembered for rollback
State = Literal["staged", "live", "retired"]
T = TypeVar("T")


class RegistryError(ValueError):
    """A bad name, an unknown version, nothing to roll back to."""


@dataclass(frozen=True, slots=True)
class FineTune:
    """One version. Only ``state`` changes after ``add``; who changed it is in the audit stream."""

    name: str
    version: int
    base_model: str
    digest: str
    artifact_path: str
    owner_account: str | None  # None: every account that may use the base model may use it
    state: State
    deployed_by: str
    deployed_at_ms: int
    rank: int

    @property
    def key(self) -> str:
        """Names this version everywhere it travels (engine adapter id, multiplexed model id, records)."""
        return f"{self.name}@v{self.version}"

    def to_fields(self) -> dict[str, str]:
        return {key: "" if value is None else str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> FineTune:
        return cls(
            name=fields["name"], version=int(fields["version"]), base_model=fields["base_model"],
            digest=fields["digest"], artifact_path=fields["artifact_path"],
            owner_account=fields["owner_account"] or None, state=fields["state"],  # type: ignore[arg-type]
            deployed_by=fields["deployed_by"], deployed_at_ms=int(fields["deployed_at_ms"]),
            rank=int(fields["rank"]),
        )


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RegistryError(f"invalid fine-tune name {name!r}: 1 to 63 characters, lower-case letters, digits, "
                            "'.', '_' and '-', starting with a letter or digit")
    return name


def version_key(name: str, version: int) -> str:
    return f"neuroapi:ft:{name}:v{version}"


def _key(name: str, part: str) -> str:
    return f"neuroapi:ft:{name}:{part}"


class FineTuneRegistry:
    def __init__(self, redis: aioredis.Redis):
        self._redis = redis  # decode_responses=True

    async def next_version(self, name: str) -> int:
        """A version number never handed out before for ``name``."""
        return int(await self._redis.incr(_key(check_name(name), "seq")))

    async def add(self, ft: FineTune) -> FineTune:
        """Record a version (from ``next_version``) as staged: known, not yet answering."""
        name = check_name(ft.name)
        key = version_key(name, ft.version)

        async def step(pipe: Pipeline) -> FineTune:
            if await pipe.exists(key):
                raise RegistryError(f"{name} v{ft.version} is already registered")
            if ft.version < 1 or ft.version > int(await pipe.get(_key(name, "seq")) or 0):
                raise RegistryError(f"{name} v{ft.version} was not allocated by next_version")
            staged = replace(ft, state="staged")
            pipe.multi()
            pipe.hset(key, mapping=staged.to_fields())
            pipe.zadd(_key(name, "versions"), {str(ft.version): ft.version})
            pipe.sadd(NAMES_KEY, name)
            self._audit(pipe, "finetune.stage", staged.deployed_by, name, ft.version, digest=ft.digest)
            return staged

        return await self._atomically([key, _key(name, "seq")], step)

    async def make_live(self, name: str, version: int, actor: str) -> FineTune:
        """Deploy: ``version`` answers for ``name``; the version live until now goes back to staged."""
        name, key, live_key = check_name(name), version_key(name, version), _key(name, "live")

        async def step(pipe: Pipeline) -> tuple[FineTune, bool]:
            fields = await pipe.hgetall(key)
            if not fields:
                raise RegistryError(f"{name} has no version {version}")
            chosen = FineTune.from_fields(fields)
            if chosen.state == "retired":
                raise RegistryError(f"{name} v{version} is retired; deploy its artifact again as a new version")
            current = await pipe.get(live_key)
            if current == str(version):
                return chosen, False
            pipe.multi()
            if current is not None:
                pipe.hset(version_key(name, int(current)), "state", "staged")
            pipe.hset(key, "state", "live")
            pipe.set(live_key, version)
            pipe.rpush(_key(name, "history"), version)
            pipe.ltrim(_key(name, "history"), -HISTORY_MAX, -1)
            self._audit(pipe, "finetune.deploy", actor, name, version, previous=current or "")
            return replace(chosen, state="live"), True

        live, changed = await self._atomically([key, live_key, _key(name, "history")], step)
        if changed:
            await broadcast(self._redis, FINETUNES_TOPIC, name)
        return live

    async def rollback(self, name: str, actor: str) -> FineTune:
        """The version live before the current one answers again; the current one is staged."""
        name, live_key, history_key = check_name(name), _key(name, "live"), _key(name, "history")

        async def step(pipe: Pipeline) -> FineTune:
            recent = await pipe.lrange(history_key, -2, -1)
            current = await pipe.get(live_key)
            if len(recent) < 2 or current != recent[-1]:
                raise RegistryError(f"{name} has no earlier live version to roll back to")
            previous = int(recent[0])
            fields = await pipe.hgetall(version_key(name, previous))
            if not fields or fields["state"] == "retired":
                raise RegistryError(f"{name} v{previous}, live before v{current}, is gone or retired")
            pipe.multi()
            pipe.rpop(history_key)
            pipe.hset(version_key(name, int(current)), "state", "staged")
            pipe.hset(version_key(name, previous), "state", "live")
            pipe.set(live_key, previous)
            self._audit(pipe, "finetune.rollback", actor, name, previous, previous=current)
            return replace(FineTune.from_fields(fields), state="live")

        restored = await self._atomically([live_key, history_key], step)
        await broadcast(self._redis, FINETUNES_TOPIC, name)
        return restored

    async def retire(self, name: str, actor: str) -> FineTune:
        """Every version retired: the name answers nothing. Returns the version that was live
        (else the newest), now retired. Its artifacts may then be deleted."""
        name, live_key = check_name(name), _key(name, "live")
        watched = [live_key, _key(name, "history"), _key(name, "versions")]

        async def step(pipe: Pipeline) -> tuple[FineTune, bool]:
            numbers = [int(v) for v in await pipe.zrange(_key(name, "versions"), 0, -1)]
            if not numbers:
                raise RegistryError(f"no fine-tune named {name}")
            current = await pipe.get(live_key)
            shown = int(current) if current is not None else numbers[-1]
            versions = [FineTune.from_fields(await pipe.hgetall(version_key(name, v))) for v in numbers]
            result = replace(next(ft for ft in versions if ft.version == shown), state="retired")
            if all(ft.state == "retired" for ft in versions):
                return result, False
            pipe.multi()
            for ft in versions:
                pipe.hset(version_key(name, ft.version), "state", "retired")
            pipe.delete(live_key, _key(name, "history"))
            self._audit(pipe, "finetune.retire", actor, name, current or "")
            return result, True

        retired, changed = await self._atomically(watched, step)
        if changed:
            await broadcast(self._redis, FINETUNES_TOPIC, name)
        return retired

    async def live(self, name: str) -> FineTune | None:
        """The version that answers for ``name``, if any."""
        name = check_name(name)
        while True:
            version = await self._redis.get(_key(name, "live"))
            if version is None:
                return None
            fields = await self._redis.hgetall(version_key(name, int(version)))
            if fields.get("state") == "live":  # else it changed between the two reads: look again
                return FineTune.from_fields(fields)

    async def versions(self, name: str) -> list[FineTune]:
        """Every version of ``name``, oldest first, in any state."""
        name = check_name(name)
        numbers = await self._redis.zrange(_key(name, "versions"), 0, -1)
        async with self._redis.pipeline(transaction=False) as pipe:
            for version in numbers:
                pipe.hgetall(version_key(name, int(version)))
            found = await pipe.execute()
        return [FineTune.from_fields(fields) for fields in found if fields]

    async def names(self) -> list[str]:
        return sorted(await self._redis.smembers(NAMES_KEY))

    async def _atomically(self, keys: list[str], step: Callable[[Pipeline], Awaitable[T]]) -> T:
        """Run ``step`` with ``keys`` watched; what it queues after ``pipe.multi()`` commits in one
        transaction, and the whole step runs again if another writer touched a key meanwhile."""
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*keys)
                    result = await step(pipe)
                    if pipe.explicit_transaction:
                        await pipe.execute()
                    return result
                except WatchError:
                    continue

    @staticmethod
    def _audit(pipe: Pipeline, action: str, actor: str, name: str, version: int | str, **extra: str) -> None:
        pipe.xadd(AUDIT_STREAM, audit_fields(actor, action, name=name, version=str(version), **extra),
                  maxlen=AUDIT_MAX_ENTRIES, approximate=True)
