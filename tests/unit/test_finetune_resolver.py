"""``model: "ft:NAME"`` → the live version for this caller (FineTuneResolver), over the real
registry on a Redis of this module's own: whose fine-tune it is, what is live, and what one
ingress replica may cache and for how long."""

from __future__ import annotations

import time

import pytest

from core.errors import GatewayError, model_not_found
from finetunes.registry import FineTune, FineTuneRegistry
from serve_app.endpoints.chat.finetune_resolver import FineTuneResolver

OWNER, OTHER = "acct_owner", "acct_other"


async def deployed(registry: FineTuneRegistry, name: str = "support-bot", owner: str | None = OWNER) -> FineTune:
    """A new version of ``name``, made live."""
    version = await registry.next_version(name)
    await registry.add(FineTune(
        name=name, version=version, base_model="smollm2-135m-instruct", digest=f"sha256:{version:064x}",
        artifact_path=f"/store/{name}/v{version}", owner_account=owner, state="staged",
        deployed_by="ml@example.com", deployed_at_ms=int(time.time() * 1000), rank=8))
    return await registry.make_live(name, version, "ops@example.com")


async def refused(resolver: FineTuneResolver, model: str, account: str, **cache) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await resolver.resolve(model, account, **cache)
    return caught.value


def looks_absent(error: GatewayError, model: str) -> bool:
    """Exactly the answer for a name that does not exist: nothing tells the caller it is there."""
    return error.rendered() == model_not_found(model).rendered() and error.status == 404


@pytest.fixture
def registry(redis) -> FineTuneRegistry:
    return FineTuneRegistry(redis)


async def test_the_live_version_answers_for_its_owner(registry):
    await deployed(registry)
    second = await deployed(registry)
    live = await FineTuneResolver(registry).resolve("ft:support-bot", OWNER)
    assert (live.version, live.key, live.state) == (second.version, "support-bot@v2", "live")
    assert live.base_model == "smollm2-135m-instruct" and live.artifact_path == "/store/support-bot/v2"


async def test_a_fine_tune_without_an_owner_answers_any_account(registry):
    await deployed(registry, "shared", owner=None)
    resolver = FineTuneResolver(registry)
    assert (await resolver.resolve("ft:shared", OWNER)).name == "shared"
    assert (await resolver.resolve("ft:shared", OTHER)).name == "shared"


async def test_another_accounts_fine_tune_is_answered_like_one_that_does_not_exist(registry):
    await deployed(registry)
    resolver = FineTuneResolver(registry)
    assert looks_absent(await refused(resolver, "ft:support-bot", OTHER), "ft:support-bot")
    assert looks_absent(await refused(resolver, "ft:no-such-thing", OTHER), "ft:no-such-thing")
    await resolver.resolve("ft:support-bot", OWNER)  # now cached: the cache does not leak it either
    assert looks_absent(await refused(resolver, "ft:support-bot", OTHER), "ft:support-bot")


async def test_a_staged_or_retired_fine_tune_is_not_found(registry):
    version = await registry.next_version("staged-only")
    await registry.add(FineTune(
        name="staged-only", version=version, base_model="smollm2-135m-instruct", digest="sha256:" + "0" * 64,
        artifact_path="/store/x", owner_account=OWNER, state="live", deployed_by="ml@example.com",
        deployed_at_ms=0, rank=8))  # add() stages whatever state it is given
    assert looks_absent(await refused(FineTuneResolver(registry), "ft:staged-only", OWNER), "ft:staged-only")

    await deployed(registry)
    await registry.retire("support-bot", "ops@example.com")
    assert looks_absent(await refused(FineTuneResolver(registry), "ft:support-bot", OWNER), "ft:support-bot")


async def test_what_was_read_is_served_from_the_cache_until_invalidated(registry):
    await deployed(registry)
    resolver = FineTuneResolver(registry)
    assert (await resolver.resolve("ft:support-bot", OWNER)).version == 1
    await deployed(registry)  # v2 live in Redis; this resolver has not been told yet
    assert (await resolver.resolve("ft:support-bot", OWNER)).version == 1
    resolver.invalidate("support-bot")  # what the FINETUNES_TOPIC broadcast does on each replica
    assert (await resolver.resolve("ft:support-bot", OWNER)).version == 2
    # A retire, once heard, takes the name out of service at once.
    await registry.retire("support-bot", "ops@example.com")
    assert (await resolver.resolve("ft:support-bot", OWNER)).version == 2
    resolver.invalidate("support-bot")
    assert looks_absent(await refused(resolver, "ft:support-bot", OWNER), "ft:support-bot")


async def test_a_name_not_found_is_cached_too_and_a_deploy_invalidation_ends_it(registry):
    resolver = FineTuneResolver(registry)
    await refused(resolver, "ft:support-bot", OWNER)
    await deployed(registry)
    await refused(resolver, "ft:support-bot", OWNER)  # the cached absence
    resolver.invalidate("other-name")  # another name's invalidation keeps this entry
    await refused(resolver, "ft:support-bot", OWNER)
    resolver.invalidate("support-bot")
    assert (await resolver.resolve("ft:support-bot", OWNER)).version == 1


async def test_clear_drops_every_cached_name(registry):
    await deployed(registry, "one")
    await deployed(registry, "two")
    resolver = FineTuneResolver(registry)
    for name in ("one", "two"):
        await resolver.resolve(f"ft:{name}", OWNER)
        await deployed(registry, name)
    resolver.clear()  # what a lost invalidation subscription does: anything may have been missed
    assert [(await resolver.resolve(f"ft:{n}", OWNER)).version for n in ("one", "two")] == [2, 2]


async def test_while_the_cache_is_not_usable_every_call_reads_the_registry_and_caches_nothing(registry):
    """cache_usable False (use_cache=False): invalidations may have been missed for too long."""
    await deployed(registry)
    resolver = FineTuneResolver(registry)
    await resolver.resolve("ft:support-bot", OWNER)  # cached v1
    await deployed(registry)
    assert (await resolver.resolve("ft:support-bot", OWNER, use_cache=False)).version == 2
    # Nothing was cached meanwhile: with the cache usable again, the old entry is what it has.
    assert (await resolver.resolve("ft:support-bot", OWNER)).version == 1
    resolver.clear()
    assert (await resolver.resolve("ft:support-bot", OWNER, False, False)).version == 2
    await deployed(registry)
    assert (await resolver.resolve("ft:support-bot", OWNER)).version == 3  # no stale v2 was kept


async def test_while_unhealthy_the_cache_is_served_but_not_filled(registry):
    """healthy False (fill_cache=False): a short outage of the invalidation channel; what was
    cached may still answer, but a fresh read is not cached, since its invalidation could be lost."""
    await deployed(registry, "cached")
    await deployed(registry, "fresh")
    resolver = FineTuneResolver(registry)
    await resolver.resolve("ft:cached", OWNER)
    await deployed(registry, "cached")
    assert (await resolver.resolve("ft:cached", OWNER, True, False)).version == 1  # served from the cache
    assert (await resolver.resolve("ft:fresh", OWNER, True, False)).version == 1
    await deployed(registry, "fresh")
    assert (await resolver.resolve("ft:fresh", OWNER, True, False)).version == 2  # read again, not cached
    assert (await resolver.resolve("ft:fresh", OWNER)).version == 2


class RacingRegistry(FineTuneRegistry):
    """Its next ``live`` read is overtaken by an invalidation, as when a deploy lands mid-read."""

    resolver: FineTuneResolver

    async def live(self, name: str) -> FineTune | None:
        answer = await super().live(name)
        self.resolver.invalidate(name)
        return answer


async def test_a_read_that_raced_an_invalidation_answers_but_is_not_cached(redis, registry):
    await deployed(registry)
    racing = RacingRegistry(redis)
    resolver = racing.resolver = FineTuneResolver(racing)
    assert (await resolver.resolve("ft:support-bot", OWNER)).version == 1
    await deployed(registry)
    assert (await resolver.resolve("ft:support-bot", OWNER)).version == 2  # not served from a stale entry
