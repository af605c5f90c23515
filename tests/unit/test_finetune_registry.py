"""The fine-tune registry on a real Redis of this module's own: versions, deploy, rollback, retire."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from core.audit import AUDIT_STREAM
from finetunes.registry import FINETUNES_TOPIC, FineTune, FineTuneRegistry, RegistryError
from tests.support.listeners import listening


async def staged(registry: FineTuneRegistry, name: str = "support-bot", owner: str | None = None) -> FineTune:
    version = await registry.next_version(name)
    ft = FineTune(name=name, version=version, base_model="smollm2-135m-instruct",
                  digest=f"sha256:{version:064x}", artifact_path=f"/store/{name}/v{version}",
                  owner_account=owner, state="live", deployed_by="ml@example.com",
                  deployed_at_ms=int(time.time() * 1000), rank=8)
    return await registry.add(ft)


async def states(registry: FineTuneRegistry, name: str = "support-bot") -> dict[int, str]:
    return {ft.version: ft.state for ft in await registry.versions(name)}


async def audit(redis) -> list[dict[str, str]]:
    return [fields for _, fields in await redis.xrange(AUDIT_STREAM)]


async def test_versions_are_monotonic(redis):
    registry = FineTuneRegistry(redis)
    assert [await registry.next_version("a") for _ in range(3)] == [1, 2, 3]
    assert await registry.next_version("b") == 1
    assert await registry.next_version("a") == 4


async def test_add_stores_a_staged_version(redis):
    registry = FineTuneRegistry(redis)
    ft = await staged(registry, owner="acct_1")
    assert ft.state == "staged"  # whatever the caller passed
    assert await registry.versions("support-bot") == [ft]
    assert ft.owner_account == "acct_1"
    assert (await staged(registry, "other")).owner_account is None
    assert await registry.names() == ["other", "support-bot"]
    assert await registry.live("support-bot") is None
    entry = (await audit(redis))[0]
    assert entry["action"] == "finetune.stage" and entry["name"] == "support-bot" and entry["version"] == "1"


async def test_add_refuses_duplicates_and_unallocated_versions(redis):
    registry = FineTuneRegistry(redis)
    ft = await staged(registry)
    with pytest.raises(RegistryError, match="already registered"):
        await registry.add(ft)
    with pytest.raises(RegistryError, match="not allocated"):
        await registry.add(replace(ft, version=7))


async def test_deploy_and_rollback_twice(redis):
    registry = FineTuneRegistry(redis)
    for _ in range(3):
        await staged(registry)
    for version in (1, 2, 3):
        live = await registry.make_live("support-bot", version, "ops@example.com")
        assert live.version == version and live.state == "live"
    assert await states(registry) == {1: "staged", 2: "staged", 3: "live"}
    assert (await registry.live("support-bot")).version == 3

    back = await registry.rollback("support-bot", "ops@example.com")
    assert back.version == 2 and back.state == "live"
    assert await states(registry) == {1: "staged", 2: "live", 3: "staged"}
    assert (await registry.rollback("support-bot", "ops@example.com")).version == 1  # further back
    assert (await registry.live("support-bot")).version == 1
    with pytest.raises(RegistryError, match="no earlier live version"):
        await registry.rollback("support-bot", "ops@example.com")
    assert (await registry.live("support-bot")).version == 1

    assert (await registry.make_live("support-bot", 3, "ops@example.com")).version == 3
    assert (await registry.rollback("support-bot", "ops@example.com")).version == 1


async def test_redeploying_the_live_version_changes_nothing(redis):
    registry = FineTuneRegistry(redis)
    await staged(registry)
    await registry.make_live("support-bot", 1, "ops")
    await registry.make_live("support-bot", 1, "ops")
    assert [e["action"] for e in await audit(redis)] == ["finetune.stage", "finetune.deploy"]
    with pytest.raises(RegistryError, match="no earlier live version"):
        await registry.rollback("support-bot", "ops")


async def test_unknown_versions(redis):
    registry = FineTuneRegistry(redis)
    with pytest.raises(RegistryError, match="no version 1"):
        await registry.make_live("support-bot", 1, "ops")
    with pytest.raises(RegistryError, match="no earlier live version"):
        await registry.rollback("support-bot", "ops")
    with pytest.raises(RegistryError, match="no fine-tune named"):
        await registry.retire("support-bot", "ops")


async def test_retire(redis):
    registry = FineTuneRegistry(redis)
    for _ in range(3):
        await staged(registry)
    await registry.make_live("support-bot", 1, "ops")
    await registry.make_live("support-bot", 2, "ops")
    retired = await registry.retire("support-bot", "boss")
    assert (retired.version, retired.state) == (2, "retired")
    assert await states(registry) == {1: "retired", 2: "retired", 3: "retired"}
    assert await registry.live("support-bot") is None
    with pytest.raises(RegistryError, match="no earlier live version"):
        await registry.rollback("support-bot", "ops")
    with pytest.raises(RegistryError, match="retired"):
        await registry.make_live("support-bot", 1, "ops")
    assert (await registry.retire("support-bot", "boss")).version == 3  # nothing live: the newest
    assert [e["action"] for e in await audit(redis)].count("finetune.retire") == 1

    fresh = await staged(registry)  # the name can come back, with a new version number
    assert fresh.version == 4
    assert (await registry.make_live("support-bot", 4, "ops")).state == "live"


async def test_audit_entries(redis):
    registry = FineTuneRegistry(redis)
    await staged(registry)
    await staged(registry)
    await registry.make_live("support-bot", 1, "alice")
    await registry.make_live("support-bot", 2, "bob")
    await registry.rollback("support-bot", "carol")
    await registry.retire("support-bot", "dave")
    entries = [e for e in await audit(redis) if e["action"] != "finetune.stage"]
    assert [(e["action"], e["actor"], e["name"], e["version"]) for e in entries] == [
        ("finetune.deploy", "alice", "support-bot", "1"),
        ("finetune.deploy", "bob", "support-bot", "2"),
        ("finetune.rollback", "carol", "support-bot", "1"),
        ("finetune.retire", "dave", "support-bot", "1"),
    ]
    assert entries[1]["previous"] == "1" and entries[2]["previous"] == "2"
    assert all(int(e["at"]) >= time.time() - 60 for e in entries)


@pytest.mark.parametrize("name", ["", "Support", "-bot", "a" * 64, "a/b", "a:b", "ü"])
async def test_invalid_names(redis, name):
    registry = FineTuneRegistry(redis)
    with pytest.raises(RegistryError, match="invalid fine-tune name"):
        await registry.next_version(name)
    with pytest.raises(RegistryError, match="invalid fine-tune name"):
        await registry.live(name)


async def test_valid_name_edges(redis):
    registry = FineTuneRegistry(redis)
    for name in ("a", "0.9_b-c", "a" * 63):
        assert await registry.next_version(name) == 1


async def test_concurrent_deploys_leave_one_live(redis):
    registry = FineTuneRegistry(redis)
    for _ in range(6):
        await staged(registry)
    await asyncio.gather(*(registry.make_live("support-bot", v, "ops") for v in range(1, 7)))
    found = await states(registry)
    assert list(found.values()).count("live") == 1
    live = await registry.live("support-bot")
    assert found[live.version] == "live"
    assert len(await redis.lrange("neuroapi:ft:support-bot:history", 0, -1)) == 6


async def test_changes_are_broadcast(redis, own_redis):
    registry = FineTuneRegistry(redis)
    heard: list[tuple[str, str]] = []
    async with listening(own_redis.url, lambda topic, subject: heard.append((topic, subject))):
        await staged(registry)
        await staged(registry)
        assert heard == []  # staging changes nothing a replica caches
        await registry.make_live("support-bot", 1, "ops")
        assert heard == [(FINETUNES_TOPIC, "support-bot")]  # broadcast returned: already handled
        await registry.make_live("support-bot", 2, "ops")
        await registry.rollback("support-bot", "ops")
        await registry.retire("support-bot", "ops")
        assert heard == [(FINETUNES_TOPIC, "support-bot")] * 4
