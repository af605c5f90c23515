"""The key-verifier pool: the only processes that hold the pepper and read key records."""

from __future__ import annotations

from ray import serve

from actors.key_crypto import KeyCrypto
from actors.key_store import KeyStore, VerifiedKey
from actors.redis_conn import connect
from config import logs
from config.secrets import load_key_material
from config.settings import Settings


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class KeyVerifier:
    def __init__(self, settings: Settings, redis_url: str):
        logs.install(in_replica=True)
        material, _ = load_key_material(settings)
        self._keys = KeyStore(connect(redis_url), KeyCrypto(material))

    async def verify(self, presented_key: str) -> VerifiedKey | None:
        return await self._keys.verify(presented_key)
