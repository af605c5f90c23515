"""Fresh key material (peppers and envelope keys) for tests that seal or verify API keys."""

from __future__ import annotations

import secrets

from cryptography.fernet import Fernet

from config.secrets import KeyMaterial


def material(peppers=(1,), envelopes=(1,)) -> KeyMaterial:
    return KeyMaterial(
        peppers={v: secrets.token_bytes(32) for v in peppers},
        envelope_keys={v: Fernet.generate_key() for v in envelopes},
        source="test",
    )
