"""How a key is kept at rest: a peppered HMAC-SHA256 of the secret (to verify) and a Fernet
ciphertext of the whole key under a versioned envelope key (so a pepper rotation can re-hash
from it). Both carry the version that made them.

A long-lived holder (a verifier replica) can swap in newer key material while it runs
(``use``), and may give a ``reload`` callback: a record under a pepper version it does not know
yet then makes it read its material once more before the check fails."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config.secrets import KeyMaterial

# At most one reload per this many seconds for unknown pepper versions: a burst of such
# records (or material that lacks the version for good) must not re-read the source each time.
RELOAD_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class SealedKey:
    digest: str = field(repr=False)  # hex HMAC-SHA256(pepper[pepper_version], secret)
    pepper_version: int
    ciphertext: str = field(repr=False)  # Fernet token of the full key
    envelope_version: int


def _hmac(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True, repr=False)
class Keyring:
    """Everything derived from one KeyMaterial; replaced as a whole, so no call sees a mix
    (API keys here, account fields in ``actors.accounts.sealing``)."""

    peppers: dict[int, bytes]
    fernets: dict[int, Fernet]
    envelope: MultiFernet
    pepper_version: int
    envelope_version: int

    @classmethod
    def of(cls, material: KeyMaterial) -> Keyring:
        fernets = {v: Fernet(k) for v, k in material.envelope_keys.items()}
        return cls(
            peppers=dict(material.peppers),
            fernets=fernets,
            # Newest first: MultiFernet encrypts with the first and decrypts with any.
            envelope=MultiFernet([fernets[v] for v in sorted(fernets, reverse=True)]),
            pepper_version=max(material.peppers),
            envelope_version=max(fernets),
        )


class KeyCrypto:
    def __init__(self, material: KeyMaterial, reload: Callable[[], KeyMaterial | None] | None = None):
        self._ring = Keyring.of(material)
        self._reload = reload
        self._last_reload = float("-inf")
        # Verifying an unknown prefix still costs one HMAC, so timing does not tell
        # "no such key" from "wrong secret".
        self._decoy = b"\0" * 32

    @property
    def pepper_version(self) -> int:
        return self._ring.pepper_version

    @property
    def envelope_version(self) -> int:
        return self._ring.envelope_version

    def use(self, material: KeyMaterial) -> None:
        """From now on, seal, verify and open with ``material`` (a rotation added a version)."""
        self._ring = Keyring.of(material)

    def knows_pepper(self, version: int) -> bool:
        return version in self._ring.peppers

    def digest(self, secret: str, version: int | None = None) -> str:
        ring = self._ring
        return _hmac(ring.peppers[ring.pepper_version if version is None else version], secret)

    def matches(self, secret: str, digest: str, version: int) -> bool:
        pepper = self._ring.peppers.get(version)
        if pepper is None and self._reload_for_unknown_version():
            pepper = self._ring.peppers.get(version)
        return self._compare(pepper, secret, digest)

    def burn_time(self, secret: str) -> None:
        """Spend what a real check spends, for a prefix that has no record."""
        self._compare(None, secret, "0" * 64)

    def _compare(self, pepper: bytes | None, secret: str, digest: str) -> bool:
        computed = _hmac(pepper or self._decoy, secret)  # same work whether or not the version exists
        return pepper is not None and hmac.compare_digest(computed, digest)

    def _reload_for_unknown_version(self) -> bool:
        # A record written under a pepper this process has not loaded: a rotation whose reload
        # message it missed. Read the material once more rather than reject a valid key.
        now = time.monotonic()
        if self._reload is None or now - self._last_reload < RELOAD_INTERVAL_S:
            return False
        self._last_reload = now
        material = self._reload()
        if material is None:
            return False
        self.use(material)
        return True

    def seal(self, plaintext_key: str, secret: str) -> SealedKey:
        ring = self._ring
        return SealedKey(
            digest=_hmac(ring.peppers[ring.pepper_version], secret),
            pepper_version=ring.pepper_version,
            ciphertext=ring.fernets[ring.envelope_version].encrypt(plaintext_key.encode()).decode(),
            envelope_version=ring.envelope_version,
        )

    def encrypt(self, plaintext_key: str) -> tuple[str, int]:
        """A ciphertext of the key under the newest envelope key, and that key's version."""
        ring = self._ring
        return ring.fernets[ring.envelope_version].encrypt(plaintext_key.encode()).decode(), ring.envelope_version

    def open(self, ciphertext: str) -> str:
        """The plaintext key back (rotation only). Raises InvalidToken under an unknown key."""
        return self._ring.envelope.decrypt(ciphertext.encode()).decode()


__all__ = ["InvalidToken", "KeyCrypto", "SealedKey"]
