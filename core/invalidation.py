"""Cache invalidation with acknowledgement, for promises that allow no grace period.

Replicas that cache a decision (a verified key, an account's scope, a fine-tune's live
version; key material) run an ``InvalidationListener``. The owner of the state changes it in
Redis first, then calls ``broadcast``: it publishes on one channel and waits until every cache
holder has dropped the entry or can no longer use its cache. When ``broadcast`` returns, no
replica serves the stale entry.

Serving through a Redis outage (``outage_serve_s``, the setting ``cache_outage_serve_s``):

- Every holder keeps a lease in the hash ``HOLDERS``: ``{holder id: "contact through serve_ms"}``,
  refreshed about every second while it is subscribed, removed when it stops gracefully.
  ``contact`` is Redis's clock (TIME, µs) when the refresh ran; ``serve_ms`` is how long the
  holder may serve its cache after that without hearing from Redis.
- A holder that loses its subscription keeps serving what it cached BEFORE the loss, for at
  most ``outage_serve_s`` counted from the moment it SENT its last successful refresh (so never
  later, in real time, than ``contact + serve_ms``); after that, and for anything not cached,
  it asks Redis (the verifier), which answers 503 while Redis is away. It caches nothing new
  while unsubscribed, and clears everything when it subscribes again.
- ``broadcast`` returns once the message's receivers (``PUBLISH``'s count) have acknowledged
  AND every registered holder has either acknowledged, proved it handled every message
  published before this one (``through``, below), or can no longer be serving its cache
  (Redis's clock past ``contact + serve_ms + LEASE_MARGIN_S``; such a lease is pruned). So a
  holder cut off from Redis delays a revocation by at most ``outage_serve_s``, never lets it
  through early. With every holder subscribed, it returns as soon as they acknowledge (as
  before). A holder that died without a graceful stop (kill -9) is indistinguishable from a
  cut-off one: revocations in the next ``outage_serve_s`` wait for its lease to lapse.
- ``through``: a holder takes Redis's time (its refresh), then PINGs on its subscription; the
  PONG comes after every message published before that time (Redis writes a published message
  into the subscriber's connection during PUBLISH). Once it has handled them, its next refresh
  advertises that time as ``through``. A holder that re-subscribed after a broadcast published
  (and so cleared its cache, missing the message) is recognised this way within about a second.
- A registry that Redis lost (a restart without persistence, a flush) cannot vouch for the
  holders it forgot, and holders re-registering cannot tell either. The registry carries a
  ``~created`` mark: a broadcast that finds none sets it to now, and broadcasts wait until it
  is ``outage_serve_s`` old (by then any forgotten holder's lease has lapsed).
  ``mark_registry_fresh`` (at ``neuroapi serve`` start-up, before any holder exists) marks a
  missing registry as one that has missed nothing (``~created`` = 0).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

import redis
import redis.asyncio as aioredis

from core.redis_conn import connect

CHANNEL = "neuroapi:invalidate"
HOLDERS = "neuroapi:cache-holders"
CREATED_FIELD = "~created"  # fields that are not holders start with "~"
SERVE_MS_FIELD = "~serve_ms"  # the longest outage_serve_s any holder announced
PING_EVERY_S = 1.0
# Silence from Redis for this long ends the subscription (which clears the cache on its return):
# long enough that a loaded 2-core node's scheduling hiccup is not mistaken for an outage.
STALE_AFTER_S = 5.0
DEFAULT_OUTAGE_SERVE_S = 60.0
LEASE_MARGIN_S = 2.0  # clock-rate differences between a holder's monotonic clock and Redis's
# How long broadcasts wait once they find the registry without its ``~created`` mark (Redis
# lost it, so it may have forgotten holders that still serve): None = the holders' longest
# outage_serve_s. Unit tests set 0: their Redis servers are fresh, no holder predates them.
LOST_REGISTRY_WAIT_S: float | None = None
POLL_S = 0.25  # how often a broadcast waiting for leases looks again
logger = logging.getLogger("neuroapi.invalidation")

# A holder's refresh: its lease (contact = now) and the longest serve_ms announced.
_REFRESH = """
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
local longest = tonumber(redis.call('HGET', KEYS[1], '~serve_ms') or '0') or 0
if tonumber(ARGV[3]) > longest then redis.call('HSET', KEYS[1], '~serve_ms', ARGV[3]) end
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
return now
"""

# A broadcaster's check: {holders still pending, µs until the last of them lapses}; prunes
# lapsed leases (and the longest serve_ms). ARGV: published_us, margin_us, default_serve_ms,
# lost_registry_wait_ms (-1: the longest serve_ms), acknowledged holder ids...
_PENDING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local published = tonumber(ARGV[1])
local margin = tonumber(ARGV[2])
local acked = {}
for i = 5, #ARGV do acked[ARGV[i]] = true end
local longest = tonumber(redis.call('HGET', KEYS[1], '~serve_ms') or '') or tonumber(ARGV[3])
local pending, wait = 0, 0
local created = tonumber(redis.call('HGET', KEYS[1], '~created') or '')
if not created then  -- lost (or never marked): it may have forgotten holders that still serve
  created = now
  redis.call('HSET', KEYS[1], '~created', string.format('%.0f', now))
end
local lost_wait_ms = tonumber(ARGV[4])
if lost_wait_ms < 0 then lost_wait_ms = longest end
if lost_wait_ms > 0 and created + lost_wait_ms * 1000 + margin > now then
  pending, wait = 1, created + lost_wait_ms * 1000 + margin - now
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local holder, lease = all[i], all[i + 1]
  if string.sub(holder, 1, 1) ~= '~' and not acked[holder] then
    local contact, through, serve_ms = string.match(lease, '^(%d+) (%d+) (%d+)$')
    if not contact then
      redis.call('HDEL', KEYS[1], holder)
    elseif tonumber(through) <= published then
      local left = tonumber(contact) + tonumber(serve_ms) * 1000 + margin - now
      if left > 0 then
        pending = pending + 1
        if left > wait then wait = left end
      else
        redis.call('HDEL', KEYS[1], holder)
      end
    end
  end
end
return {pending, string.format('%.0f', wait), longest}
"""


class InvalidationTimeout(RuntimeError):
    """Some replica received the message but did not confirm in time."""


def _ack_key(message_id: str) -> str:
    return f"neuroapi:invalidate-ack:{message_id}"


async def server_time_us(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1_000_000 + int(micros)


def mark_registry_fresh(redis_url: str) -> None:
    """Start-up, before any cache holder exists: a missing registry has missed nothing, so
    broadcasts need not wait for it to age (``~created`` = 0). An existing one is kept."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.hsetnx(HOLDERS, CREATED_FIELD, 0)
    finally:
        client.close()


async def broadcast(redis: aioredis.Redis, topic: str, subject: str, timeout_s: float = 10.0,
                    wait_for_leases: bool = True, outage_serve_s: float = DEFAULT_OUTAGE_SERVE_S) -> int:
    """Tell every cache holder to drop ``subject`` under ``topic``; wait for all of them.

    Returns how many replicas confirmed. Call it after the authoritative change is written.
    ``timeout_s`` bounds the wait for receivers' acknowledgements; the wait for holders cut off
    from Redis is bounded by their leases (``outage_serve_s`` plus a margin). With
    ``wait_for_leases=False`` (for advisory messages, e.g. address blocks) only receivers count.
    ``outage_serve_s`` applies when the registry does not say what its holders use."""
    message_id = secrets.token_hex(12)
    ack_key = _ack_key(message_id)
    payload = json.dumps({"id": message_id, "topic": topic, "subject": subject})
    receivers = await redis.publish(CHANNEL, payload)
    started = time.monotonic()
    published_us = await server_time_us(redis) if wait_for_leases else 0
    pending_script = redis.register_script(_PENDING)
    acked: list[str] = []
    try:
        while True:
            if len(acked) >= receivers:
                if not wait_for_leases:
                    break
                pending, wait_us, longest_ms = await pending_script(keys=[HOLDERS], args=[
                    published_us, int(LEASE_MARGIN_S * 1e6), int(outage_serve_s * 1000),
                    -1 if LOST_REGISTRY_WAIT_S is None else int(LOST_REGISTRY_WAIT_S * 1000), *acked])
                if int(pending) == 0:
                    break
                # Bounded by the leases themselves; this only guards against a clock gone wrong.
                if time.monotonic() - started > timeout_s + int(longest_ms) / 1000 + 2 * LEASE_MARGIN_S:
                    raise InvalidationTimeout(f"{pending} replicas cut off from Redis kept renewing their leases")
                wait_s = min(max(int(wait_us) / 1e6, 0.01), POLL_S)
            else:
                wait_s = started + timeout_s - time.monotonic()
                if wait_s <= 0:
                    raise InvalidationTimeout(
                        f"{receivers - len(acked)} of {receivers} replicas did not confirm the change")
            # Short reads: a caller's client may bound each reply (socket_timeout), and a BLPOP
            # longer than that bound would fail the broadcast instead of waiting.
            popped = await redis.blpop([ack_key], timeout=min(max(wait_s, 0.01), POLL_S))
            if popped is not None:
                acked.append(popped[1])
    finally:
        await redis.delete(ack_key)
    return len(acked)


class InvalidationListener:
    """Subscribes for as long as the replica lives; calls ``on_message(topic, subject)`` for
    each invalidation and ``on_reset()`` when it (re)subscribes (messages may have been missed
    before). Its owner reads ``cache_usable`` before using its cache and fills the cache only
    while ``healthy``."""

    def __init__(
        self,
        redis_url: str,
        on_message: Callable[[str, str], None],
        on_reset: Callable[[], None],
        outage_serve_s: float = DEFAULT_OUTAGE_SERVE_S,
    ):
        self._redis_url = redis_url
        self._on_message = on_message
        self._on_reset = on_reset
        self._outage_serve_s = outage_serve_s
        self.holder_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._subscribed = False
        self._last_heard = 0.0
        self._serve_until = 0.0  # monotonic: the cache may be used until then
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """Subscribed, heard from Redis lately, lease current: the cache may be used and filled."""
        now = time.monotonic()
        return self._subscribed and now - self._last_heard < STALE_AFTER_S and now < self._serve_until

    @property
    def cache_usable(self) -> bool:
        """What was cached may be served: while healthy, and for at most ``outage_serve_s``
        after the last lease refresh was sent while Redis is unreachable."""
        return time.monotonic() < self._serve_until

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._serve_until = 0.0
        client = connect(self._redis_url, retries=0)
        try:  # a graceful stop: no broadcast needs to wait for this lease to lapse
            await asyncio.wait_for(client.hdel(HOLDERS, self.holder_id), timeout=2.0)
        except Exception as error:  # Redis away: the lease lapses on its own
            logger.info("could not remove the cache lease (%s)", type(error).__name__)
        finally:
            await client.aclose()

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the connection, or Redis itself
                if self._subscribed:  # once per loss, not per reconnect attempt
                    logger.warning("invalidation subscription lost (%s); serving only what was cached "
                                   "before, for at most %.0f s", type(error).__name__, self._outage_serve_s)
            finally:
                self._subscribed = False
            await asyncio.sleep(0.2)  # then reconnect: a restarted Redis is heard from within a second

    async def _refresh(self, client: aioredis.Redis, script, through_us: int) -> int:
        """Renews the lease; returns Redis's time of the renewal (µs)."""
        sent = time.monotonic()
        contact = await asyncio.wait_for(
            script(keys=[HOLDERS], args=[self.holder_id, through_us, int(self._outage_serve_s * 1000)]),
            timeout=STALE_AFTER_S)
        self._serve_until = sent + self._outage_serve_s
        return int(contact)

    async def _listen_once(self) -> None:
        client = connect(self._redis_url, retries=0, protocol=2)  # this loop reconnects itself
        refresh = client.register_script(_REFRESH)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            last_ping = 0.0
            through_us = 0  # every message published before this Redis time has been handled
            ping: tuple[str, int] | None = None  # (token, Redis time taken just before it)
            while True:
                now = time.monotonic()
                if self._subscribed:
                    if now >= self._serve_until:  # the lease lapsed (a stalled loop): start over, cleared
                        raise TimeoutError("lease lapsed")
                    if now - self._last_heard > STALE_AFTER_S:
                        raise TimeoutError("no answer from Redis")
                    if now - last_ping >= PING_EVERY_S:
                        mark = await self._refresh(client, refresh, through_us)
                        token = secrets.token_hex(6)
                        await pubsub.ping(token)
                        ping, last_ping = (token, mark), now
                message = await pubsub.get_message(timeout=PING_EVERY_S)
                if message is None:
                    continue
                self._last_heard = time.monotonic()
                kind = message["type"]
                if kind == "subscribe":
                    self._serve_until = 0.0  # nothing is cached anew until the lease is renewed
                    self._on_reset()  # anything cached before now may have missed a message
                    # ``through`` stays 0 until the first PONG: a message published between the
                    # subscription and now is still unread on the connection.
                    await self._refresh(client, refresh, 0)
                    self._subscribed = True
                    last_ping = 0.0
                elif kind == "pong":
                    if ping is not None and message["data"] == ping[0]:
                        through_us, ping = ping[1], None
                elif kind == "message":
                    item = json.loads(message["data"])
                    self._on_message(item["topic"], item["subject"])
                    await client.rpush(_ack_key(item["id"]), self.holder_id)
                    await client.expire(_ack_key(item["id"]), 60)
        finally:
            await pubsub.aclose()
            await client.aclose()
