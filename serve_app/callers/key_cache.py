"""The ingress's cache of verified keys, so a known key costs no hop and no Redis read.

An entry is keyed by the prefix and holds a SHA-256 of the whole presented key: a wrong secret
with a right prefix never rides a cached success. Entries are dropped by invalidation messages
(``core.invalidation``): one key on revocation, all of an account's keys when its scope
changes. ``generation`` stops a verification that raced an invalidation from caching its
now-stale answer."""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from actors.keys.store import VerifiedKey


def fingerprint(presented_key: str) -> bytes:
    return hashlib.sha256(presented_key.encode()).digest()


class VerifiedKeyCache:
    def __init__(self, max_entries: int = 100_000):
        self._entries: OrderedDict[str, tuple[bytes, VerifiedKey]] = OrderedDict()
        self._by_account: dict[str, set[str]] = {}
        self._max_entries = max_entries
        self.generation = 0

    def get(self, prefix: str, key_fingerprint: bytes) -> VerifiedKey | None:
        entry = self._entries.get(prefix)
        if entry is None or not hmac.compare_digest(entry[0], key_fingerprint):
            return None
        return entry[1]

    def put(self, key_fingerprint: bytes, verified: VerifiedKey, generation: int) -> None:
        """Cache unless an invalidation happened since ``generation`` was read."""
        if generation != self.generation:
            return
        self._entries[verified.prefix] = (key_fingerprint, verified)
        self._entries.move_to_end(verified.prefix)
        self._by_account.setdefault(verified.account_id, set()).add(verified.prefix)
        while len(self._entries) > self._max_entries:
            self._forget(self._entries.popitem(last=False)[1][1])

    def invalidate(self, prefix: str) -> None:
        self.generation += 1
        entry = self._entries.pop(prefix, None)
        if entry is not None:
            self._forget(entry[1])

    def invalidate_account(self, account_id: str) -> None:
        self.generation += 1
        for prefix in self._by_account.pop(account_id, ()):
            self._entries.pop(prefix, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_account.clear()

    def _forget(self, verified: VerifiedKey) -> None:
        prefixes = self._by_account.get(verified.account_id)
        if prefixes is not None:
            prefixes.discard(verified.prefix)
            if not prefixes:
                del self._by_account[verified.account_id]
