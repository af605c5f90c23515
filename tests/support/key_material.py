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


# One material for the accounts a test process makes, so that every store it builds opens them.
ACCOUNTS_MATERIAL = material()


def account_store(redis, key_material: KeyMaterial | None = None):
    """An ``AccountStore`` that seals emails and keys their index (``actors.accounts.sealing``)
    with ``key_material``, by default one shared by the whole test process."""
    from actors.accounts.sealing import AccountSealer
    from actors.accounts.store import AccountStore

    return AccountStore(redis, AccountSealer(key_material or ACCOUNTS_MATERIAL))
