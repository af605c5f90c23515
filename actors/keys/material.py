"""Key material in a long-lived replica, kept current while secrets are rotated.

A rotation (``actors.keys.rotation``) first adds a version to the key material's source, then
broadcasts ``reload_subject(kind, version)`` on topic ``SECRETS_TOPIC`` and waits for every
subscribed replica to acknowledge, and only then moves records to that version. A replica here
reloads from its source before acknowledging; if the reloaded material still lacks the
announced version (the environment of this replica was not updated, the file is not on this
node) it does not acknowledge, so the rotation stops before any record moves. Besides: after a
lost subscription (messages may have been missed), and when a record names a pepper version it
does not know yet, it reloads too."""

from __future__ import annotations

import logging
from collections.abc import Callable

from actors.keys.crypto import KeyCrypto
from config.secrets import KeyMaterial
from core.invalidation import InvalidationListener

SECRETS_TOPIC = "secrets"
KINDS = ("pepper", "envelope")
logger = logging.getLogger("neuroapi.key_material")


class MissingKeyVersion(RuntimeError):
    """A rotation announced a version that this replica's source does not have."""


def reload_subject(kind: str, version: int) -> str:
    return f"{kind}:{version}"


def _parse_subject(subject: str) -> tuple[str, int] | None:
    kind, _, version = subject.partition(":")
    return (kind, int(version)) if kind in KINDS and version.isdigit() else None


class ReplicaKeyMaterial:
    """Holds the replica's ``crypto`` (give it to the KeyStore) and reloads it in place;
    ``current()`` is the material last loaded (a new object after each reload)."""

    def __init__(self, load: Callable[[], KeyMaterial]):
        self._load = load
        self._material = load()
        self.crypto = KeyCrypto(self._material, reload=self._try_load)
        self._listener: InvalidationListener | None = None

    def current(self) -> KeyMaterial:
        return self._material

    def listen(self, redis_url: str) -> None:
        """Follow rotations (needs a running event loop)."""
        self._listener = InvalidationListener(redis_url, self._on_message, self._on_reset)
        self._listener.start()

    @property
    def listening(self) -> bool:
        return self._listener is not None and self._listener.healthy

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    def reload(self) -> KeyMaterial:
        material = self._load()  # raises before anything changes: the old material stays
        self._material = material
        self.crypto.use(material)
        return material

    def _try_load(self) -> KeyMaterial | None:
        """The crypto's hook for an unknown pepper version: it applies what this returns."""
        try:
            self._material = self._load()
        except Exception as error:  # the type only: a message is not ours to vet for secrets
            logger.warning("could not reload key material (%s); keeping what is loaded", type(error).__name__)
            return None
        return self._material

    def _on_message(self, topic: str, subject: str) -> None:
        if topic != SECRETS_TOPIC:
            return
        # Raising here means no acknowledgement: the rotation's broadcast times out and it
        # stops before moving any record to material this replica cannot use.
        material = self.reload()
        announced = _parse_subject(subject)
        if announced is None:
            return
        kind, version = announced
        known = material.peppers if kind == "pepper" else material.envelope_keys
        if version not in known:
            logger.warning("a rotation announced %s v%d, which this replica's key material (%s) lacks; "
                           "not acknowledging", kind, version, material.source)
            raise MissingKeyVersion(f"{kind} v{version} is not in this replica's key material")
        logger.info("key material reloaded for %s v%d", kind, version)

    def _on_reset(self) -> None:
        # Called while unsubscribed or on resubscribing: a rotation may have gone unheard.
        material = self._try_load()
        if material is not None:
            self.crypto.use(material)
