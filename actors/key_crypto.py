"""How a key is kept at rest: a peppered HMAC-SHA256 of the secret (to verify) and a Fernet
ciphertext of the whole key under a versioned envelope key (so a pepper rotation can re-hash
from it). Both carry the version that made them."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config.secrets import KeyMaterial


@dataclass(frozen=True, slots=True)
class SealedKey:
    digest: str  # hex HMAC-SHA256(pepper[pepper_version], secret)
    pepper_version: int
    ciphertext: str  # Fernet token of the full key
    envelope_version: int


def _hmac(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


class KeyCrypto:
    def __init__(self, material: KeyMaterial):
        self._peppers = dict(material.peppers)
        self.pepper_version = max(self._peppers)
        self._fernets = {v: Fernet(k) for v, k in material.envelope_keys.items()}
        self.envelope_version = max(self._fernets)
        # Newest first: MultiFernet encrypts with the first and decrypts with any.
        self._envelope = MultiFernet([self._fernets[v] for v in sorted(self._fernets, reverse=True)])
        # Verifying an unknown prefix still costs one HMAC, so timing does not tell
        # "no such key" from "wrong secret".
        self._decoy = b"\0" * 32

    def digest(self, secret: str, version: int | None = None) -> str:
        return _hmac(self._peppers[self.pepper_version if version is None else version], secret)

    def matches(self, secret: str, digest: str, version: int) -> bool:
        pepper = self._peppers.get(version)
        computed = _hmac(pepper or self._decoy, secret)  # same work whether or not the version exists
        return pepper is not None and hmac.compare_digest(computed, digest)

    def burn_time(self, secret: str) -> None:
        """Spend what a real check spends, for a prefix that has no record."""
        self.matches(secret, "0" * 64, version=-1)

    def seal(self, plaintext_key: str, secret: str) -> SealedKey:
        return SealedKey(
            digest=self.digest(secret),
            pepper_version=self.pepper_version,
            ciphertext=self._fernets[self.envelope_version].encrypt(plaintext_key.encode()).decode(),
            envelope_version=self.envelope_version,
        )

    def open(self, ciphertext: str) -> str:
        """The plaintext key back (rotation only). Raises InvalidToken under an unknown key."""
        return self._envelope.decrypt(ciphertext.encode()).decode()


__all__ = ["InvalidToken", "KeyCrypto", "SealedKey"]
