"""The ingress's failed-authentication guard (serve_app.callers.guard), beyond what
test_auth_abuse.py covers: which address a caller is counted under, blocks announced by other
replicas and how long they last, the announcement itself reaching another replica, the count
shared through Redis, and counting alone while Redis is unreachable. Real Redis of this
module's own, no Ray."""

from __future__ import annotations

import asyncio

import pytest

from actors.accounts.throttle import NOT_AN_IP
from core.errors import GatewayError
from core.redis_conn import connect
from serve_app.callers.client_address import parse_networks
from serve_app.callers.guard import BLOCKS_TOPIC, FailedAuthGuard
from serve_app.runtime import free_port
from tests.support.listeners import listening

PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1/32"])
WRONG_KEY = GatewayError(401, "Invalid API key.", code="invalid_api_key")


def guard(redis, limit: int = 3, window_s: float = 60) -> FailedAuthGuard:
    return FailedAuthGuard(redis, PROXIES, limit=limit, window_s=window_s)


def refusal(call) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call()
    return caught.value


# ---- which address ---------------------------------------------------------------------------

def test_forwarded_for_counts_only_behind_a_trusted_proxy(redis):
    one = guard(redis)
    # An untrusted peer's own header is its word, not evidence: the peer is counted.
    assert one.address("203.0.113.9", "198.51.100.1") == "203.0.113.9"
    # Behind our proxies, the first untrusted hop from the right; what the client wrote further left is ignored.
    assert one.address("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3") == "198.51.100.1"
    assert one.address("10.0.0.5", None) == "10.0.0.5"
    # Canonical form: the same IPv6 address written two ways is one bucket.
    assert one.address("127.0.0.1", "2001:DB8:0:0::0001") == one.address("2001:db8::1", None) == "2001:db8::1"


def test_whatever_is_not_an_ip_is_one_shared_bucket(redis):
    one = guard(redis)
    assert one.address(None, None) == NOT_AN_IP
    assert one.address("127.0.0.1", "not-an-address") == NOT_AN_IP
    assert one.address("some-host", "198.51.100.1") == NOT_AN_IP  # a peer that is no IP is never trusted


def test_source_is_the_address_while_it_is_not_blocked(redis):
    one = guard(redis)
    assert one.source("127.0.0.1", "2001:DB8::7") == "2001:db8::7"
    one.block("2001:db8::7 30")
    error = refusal(lambda: one.source("127.0.0.1", "2001:DB8::7"))
    assert error.status == 429 and error.code == "too_many_failed_attempts"
    # The block is on the client behind the proxy, not the proxy and not its other clients.
    assert one.source("127.0.0.1", "2001:db8::8") == "2001:db8::8"
    assert one.source("127.0.0.1", None) == "127.0.0.1"


# ---- announced blocks ------------------------------------------------------------------------

def test_an_announced_block_refuses_the_address_with_a_whole_retry_after(redis):
    one = guard(redis)
    one.block("198.51.100.7 12.3")
    assert 12 < one.blocked_for("198.51.100.7") <= 12.3
    error = refusal(lambda: one.refuse_if_blocked("198.51.100.7"))
    assert (error.status, error.code, error.headers) == (429, "too_many_failed_attempts", {"Retry-After": "13"})
    assert "retry after 13 s" in error.message
    one.refuse_if_blocked("198.51.100.8")  # another address is not refused
    one.block("2001:DB8::0042 30")  # announced in any spelling, refused in canonical form
    assert refusal(lambda: one.refuse_if_blocked("2001:db8::42")).status == 429


async def test_a_block_ends_by_itself_and_a_short_one_still_says_retry_after_one_second(redis):
    one = guard(redis)
    one.block("198.51.100.7 0.2")
    assert refusal(lambda: one.refuse_if_blocked("198.51.100.7")).headers["Retry-After"] == "1"
    await asyncio.sleep(0.25)
    assert one.blocked_for("198.51.100.7") == 0
    one.refuse_if_blocked("198.51.100.7")
    assert one.source("198.51.100.7", None) == "198.51.100.7"


def test_a_later_announcement_replaces_the_earlier_one(redis):
    one = guard(redis)
    one.block("198.51.100.7 30")
    one.block("198.51.100.7 5")
    assert 4 < one.blocked_for("198.51.100.7") <= 5


# ---- across replicas -------------------------------------------------------------------------

async def test_the_attempt_that_reaches_the_limit_tells_the_other_replicas(redis, own_redis):
    """Replica two has seen none of the failures; it refuses the address at once (no Redis read)
    because replica one announced the block before answering."""
    one, two = guard(redis), guard(redis)
    heard: list[str] = []

    def on_message(topic: str, subject: str) -> None:  # what the gateway's listener does
        if topic == BLOCKS_TOPIC:
            heard.append(subject)
            two.block(subject)

    async with listening(own_redis.url, on_message):
        answers = [await one.failed("198.51.100.7", WRONG_KEY) for _ in range(2)]
        assert heard == [] and two.blocked_for("198.51.100.7") == 0  # below the limit: nothing announced
        answers.append(await one.failed("198.51.100.7", WRONG_KEY))
        assert [a.status for a in answers] == [401, 401, 401]
        # broadcast returned only after the listener handled it
        assert [subject.split(" ")[0] for subject in heard] == ["198.51.100.7"]
        assert 59 < two.blocked_for("198.51.100.7") <= 60
        assert refusal(lambda: two.source("198.51.100.7", None)).status == 429
        assert two.blocked_for("198.51.100.8") == 0
        # Already blocked: the next failure is not announced again.
        assert (await one.failed("198.51.100.7", WRONG_KEY)).status == 429
        assert len(heard) == 1


async def test_failures_on_different_replicas_add_up_in_redis(redis):
    one, two = guard(redis), guard(redis)
    assert (await one.failed("198.51.100.9", WRONG_KEY)).status == 401
    assert (await two.failed("198.51.100.9", WRONG_KEY)).status == 401
    assert (await one.failed("198.51.100.9", WRONG_KEY)).status == 401  # the third, anywhere, blocks
    for replica in (one, two):
        # Each refuses whatever was known: two never saw the limit reached itself.
        later = await replica.failed("198.51.100.9", WRONG_KEY)
        assert later.status == 429 and later.code == "too_many_failed_attempts"
        assert int(later.headers["Retry-After"]) in (59, 60)
        assert replica.blocked_for("198.51.100.9") > 58
    assert (await two.failed("198.51.100.10", WRONG_KEY)).status == 401


async def test_while_redis_is_unreachable_the_replica_counts_alone():
    """Redis away: failures are still bounded, by this replica's own window, and answered."""
    cut_off = connect(f"redis://127.0.0.1:{free_port()}/0", retries=0)  # nothing listens there
    one = guard(cut_off, limit=2)
    try:
        answers = [await one.failed("198.51.100.11", WRONG_KEY) for _ in range(3)]
        assert [a.status for a in answers] == [401, 401, 429]
        assert answers[2].headers["Retry-After"] in ("59", "60")
        assert refusal(lambda: one.source("198.51.100.11", None)).status == 429
        assert (await one.failed("198.51.100.12", WRONG_KEY)).status == 401  # per address still
    finally:
        await cut_off.aclose()
