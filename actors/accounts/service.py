"""Self-service accounts as plain Python: sign up, log in and out, and manage one's own keys.

Runs inside the key-verifier pool (the processes that hold key material): minting a key seals
it, a session token is signed with a key derived from the pepper, and an account's email is
sealed and its index keyed (``actors.accounts.sealing``). bcrypt runs in threads
so a login never stalls the key checks sharing the replica's event loop; sign-ups and log-ins
each have their own bounded budget of threads (``actors.accounts.work_budget``), so a sign-up flood never
queues in front of a log-in, and past its budget a call is refused (``Busy``) at once."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from actors.accounts.passwords import check_rules, hash_password, verify_password
from actors.accounts.sealing import AccountSealer
from actors.accounts.sessions import Session, SessionStore, SessionTokens
from actors.accounts.store import Account, AccountStore, normalise_email
from actors.accounts.work_budget import WorkBudget
from actors.keys.crypto import KeyCrypto
from actors.keys.store import KeyInfo, KeyStore
from config.secrets import KeyMaterial

# Per replica. A sign-up is rare and may wait or be retried: one hashing at a time, at the lowest
# CPU priority, so it takes only CPU that log-ins and calls leave idle. Log-ins run on a pool of
# their own, sized for a small machine.
SIGNUP_HASHING, SIGNUP_WAITING, SIGNUP_NICE = 1, 4, 19
LOGIN_HASHING, LOGIN_WAITING = 2, 64


class AccountService:
    def __init__(self, redis: aioredis.Redis, material: Callable[[], KeyMaterial], *,
                 password_rounds: int = 12, session_ttl_s: int = 3600):
        self._redis = redis
        self._material = material
        self._password_rounds = password_rounds
        self._session_ttl_s = session_ttl_s
        # Opens and seals the email with whatever material is current (reloads included).
        self.accounts = self._accounts = AccountStore(redis, AccountSealer(material))
        self._sessions = SessionStore(redis)
        self._built_from: KeyMaterial | None = None
        self._signup_budget = WorkBudget("signup", SIGNUP_HASHING, SIGNUP_WAITING, nice=SIGNUP_NICE)
        self._login_budget = WorkBudget("login", LOGIN_HASHING, LOGIN_WAITING)

    def _current(self) -> tuple[KeyStore, SessionTokens]:
        """Key store and token signer for the current key material (rebuilt after a reload)."""
        material = self._material()
        if material is not self._built_from:
            self._keys = KeyStore(self._redis, KeyCrypto(material))
            self._tokens = SessionTokens(material.peppers)
            self._built_from = material
        return self._keys, self._tokens

    async def signup(self, email: str, password: str) -> Account:
        """Raises ``AccountError``, ``PasswordError``, or ``Busy`` when the sign-up budget is full."""
        normalise_email(email)  # a bad address or password costs no hashing
        check_rules(password)
        hashed = await self._signup_budget.run(hash_password, password, self._password_rounds)
        return await self._accounts.create(email, hashed)

    async def login(self, email: str, password: str) -> tuple[str, Session] | None:
        """A new session token, or None (same time whether the email exists or not)."""
        account = await self._accounts.by_email(email)
        hashed = await self._accounts.password_hash(account.id) if account else ""
        matches = await self._login_budget.run(verify_password, password, hashed, self._password_rounds)
        if not matches or account.status != "active":
            return None
        token, session = self._current()[1].mint(account.id, self._session_ttl_s)
        await self._sessions.open(session)
        return token, session

    async def check_password(self, account_id: str, password: str) -> bool:
        """The account's own password (on the log-in budget); False for an unknown account."""
        hashed = await self._accounts.password_hash(account_id)
        return bool(hashed) and await self._login_budget.run(verify_password, password, hashed, self._password_rounds)

    async def session(self, token: str) -> Session | None:
        session = self._current()[1].check(token)
        if session is None or not await self._sessions.is_open(session):
            return None
        return session if await self._accounts.status(session.account_id) == "active" else None

    async def logout(self, token: str) -> bool:
        session = await self.session(token)
        if session is not None:
            await self._sessions.close(session)
        return session is not None

    async def create_key(self, account_id: str, name: str) -> tuple[str, KeyInfo]:
        return await self._current()[0].create(account_id, name)

    async def list_keys(self, account_id: str) -> list[KeyInfo]:
        return await self._current()[0].list(account_id)

    async def revoke_key(self, account_id: str, prefix: str) -> bool:
        """Revoke one of the account's own keys; False if it has no such key."""
        keys = self._current()[0]
        if await keys.owner(prefix) != account_id:
            return False
        await keys.revoke(prefix)
        return True

    async def record_key_uses(self, last_used: dict[str, int]) -> None:
        await self._current()[0].record_uses(last_used)
