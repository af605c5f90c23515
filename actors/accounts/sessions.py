"""Session tokens for a logged-in account: ``nsess_<payload>.<signature>``.

The payload (account id, session id, expiry, signing-key version) is signed with HMAC-SHA256
under a key derived from the pepper of that version, so only processes holding key material
can mint or check one. A token is short-lived and also needs its session record in Redis,
which logout deletes: a logged-out token is dead before its expiry. Each account's open
sessions are also indexed, so deleting the account ends all of them at once
(``actors.accounts.deletion``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from core.key_format import SESSION_TOKEN_TAG

TOKEN_TAG = SESSION_TOKEN_TAG


def session_key(session_id: str) -> str:
    return f"neuroapi:session:{session_id}"


def account_sessions_key(account_id: str) -> str:
    """Sorted set of the account's session ids, scored by expiry (unix seconds)."""
    return f"neuroapi:account:{account_id}:sessions"


# The record and its index entry together. Expired entries are pruned here, and the index
# expires with the account's last session, so it never outgrows the sessions still open.
_OPEN = """
-- KEYS[1] session record  KEYS[2] account index  ARGV: account id, session id, expires_at, now
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then redis.call('EXPIREAT', KEYS[2], last[2]) end
return 1
"""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    account_id: str
    session_id: str
    expires_at: int


class SessionTokens:
    """Mint and check tokens; ``peppers`` maps version to pepper (the newest signs)."""

    def __init__(self, peppers: dict[int, bytes]):
        self._keys = {v: hmac.new(p, b"neuroapi session tokens v1", hashlib.sha256).digest()
                      for v, p in peppers.items()}
        self._version = max(self._keys)

    def mint(self, account_id: str, ttl_s: int) -> tuple[str, Session]:
        session = Session(account_id, secrets.token_urlsafe(16), int(time.time()) + ttl_s)
        payload = _b64(json.dumps({"a": session.account_id, "s": session.session_id,
                                   "e": session.expires_at, "v": self._version}).encode())
        return f"{TOKEN_TAG}{payload}.{self._sign(payload, self._version)}", session

    def check(self, token: str) -> Session | None:
        """The session a well-signed, unexpired token names; None otherwise."""
        if not token.startswith(TOKEN_TAG):
            return None
        payload, _, signature = token[len(TOKEN_TAG):].partition(".")
        try:
            fields = json.loads(_unb64(payload))
            version, expires_at = int(fields["v"]), int(fields["e"])
            account_id, session_id = str(fields["a"]), str(fields["s"])
        except (ValueError, KeyError, TypeError):
            return None
        if version not in self._keys or not hmac.compare_digest(self._sign(payload, version), signature):
            return None
        if expires_at <= time.time():
            return None
        return Session(account_id, session_id, expires_at)

    def _sign(self, payload: str, version: int) -> str:
        return _b64(hmac.new(self._keys[version], payload.encode(), hashlib.sha256).digest())


class SessionStore:
    """Live sessions in Redis (``neuroapi:session:<id>`` → account id, expiring with the token),
    indexed per account (``account_sessions_key``)."""

    def __init__(self, redis: aioredis.Redis):
        self._redis = redis
        self._open = redis.register_script(_OPEN)

    async def open(self, session: Session) -> None:
        await self._open(keys=[session_key(session.session_id), account_sessions_key(session.account_id)],
                         args=[session.account_id, session.session_id, session.expires_at, int(time.time())])

    async def is_open(self, session: Session) -> bool:
        return await self._redis.get(session_key(session.session_id)) == session.account_id

    async def close(self, session: Session) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(session_key(session.session_id))
            pipe.zrem(account_sessions_key(session.account_id), session.session_id)
            await pipe.execute()

    async def close_all(self, account_id: str) -> int:
        """End every open session of the account; returns how many records were deleted. A
        session opened meanwhile makes it read again (WATCH), so none slips through."""
        index = account_sessions_key(account_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(index)
                    session_ids = await pipe.zrange(index, 0, -1)
                    pipe.multi()
                    for session_id in session_ids:
                        pipe.delete(session_key(session_id))
                    pipe.delete(index)
                    results = await pipe.execute()
                    return sum(results[:-1])
                except WatchError:
                    continue
