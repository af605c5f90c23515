"""Sealing and opening an account's personal fields, and the keyed email index.

Redis alone must reveal no address. So the account hash (``neuroapi:account:<id>``) keeps the
email only sealed, and the index from email to account is keyed by a secret:

- ``email_sealed`` = ``v<N>:<Fernet token>``: the address encrypted under envelope key N, the
  same versioned envelope keys that seal API keys (``config.secrets.KeyMaterial``). The version
  travels with the value, so each sealed field can be opened, and moved to a newer key, on its
  own.
- the index ``neuroapi:account-by-email:v<P>:<hex HMAC-SHA256(pepper P, address)>`` (value:
  the account id), keyed with the versioned pepper (domain-separated from key digests). A
  dictionary of addresses does not reverse it without the pepper. A lookup computes the name
  under every pepper version it holds, newest first, plus the pre-sealing name
  (``neuroapi:account-by-email:<sha256(address)>``), and reads them in one MGET.
- ``email_index`` = the index key's name, in the account hash: the purge (the housekeeping
  deployment, which holds no key material) deletes the index by this name, no pepper needed.

Only processes that already hold key material seal, open or name the index: the key-verifier
pool (which reloads it on rotation, ``actors.keys.material``) and the CLI. Every other
deployment asks the verifier (email → account id, account id → email, the account export).

Versions move forward in two ways, one compare-and-set each (``AccountStore.reseal``): on the
next touch (a log-in, a lookup, a read of the email), and by ``neuroapi secrets rotate-*``,
which reseals every account after every replica has the new version
(``actors.keys.rotation``). A record written before sealing existed (plaintext ``email``,
SHA-256 index) is read as it is and moved the same way: sealed, indexed under the current
pepper, the plaintext field and the old index deleted.

The Stripe customer and subscription ids are sealed the same way (``actors.billing.store``):
``stripe_customer_sealed`` and ``stripe_subscription_sealed`` in the account hash, and the index
from customer to account is ``neuroapi:billing-by-customer:v<P>:<hex HMAC-SHA256(pepper P,
context + customer id)>`` (another context than the email's: the two indexes never collide),
its name kept in ``stripe_customer_index`` for the purge. Ids written before (plaintext
``stripe_customer_id``/``stripe_subscription_id``, the index ``neuroapi:billing-by-customer:<id>``)
are read and moved like a pre-sealing email. The webhook path (the ingress) and the usage
reporter hold no key material: they ask the verifier pool (``actors.billing.service.BillingIds``).

Nothing here logs, prints or raises with an address, a token or key material."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

from cryptography.fernet import InvalidToken

from actors.keys.crypto import Keyring
from config.secrets import KeyMaterial

EMAIL_INDEX_PREFIX = "neuroapi:account-by-email:"
CUSTOMER_INDEX_PREFIX = "neuroapi:billing-by-customer:"
# HMAC input = a context + the value: never equal to what a key digest (or the other index) hashes.
_INDEX_CONTEXT = b"neuroapi:account-email\0"
_CUSTOMER_CONTEXT = b"neuroapi:stripe-customer\0"
_SEALED = re.compile(r"v(\d{1,9}):(.+)", re.DOTALL)
_INDEX = re.compile(r"(?:" + re.escape(EMAIL_INDEX_PREFIX) + "|" + re.escape(CUSTOMER_INDEX_PREFIX)
                    + r")v(\d{1,9}):[0-9a-f]{64}")


class SealError(ValueError):
    """A sealed value that does not open under the key material held (or is not sealed)."""


def legacy_email_index_key(email: str) -> str:
    """The index name before sealing: a bare SHA-256 of the address (read, then moved)."""
    return EMAIL_INDEX_PREFIX + hashlib.sha256(email.encode()).hexdigest()


def legacy_customer_index_key(customer_id: str) -> str:
    """The customer index name before sealing: the plaintext id in the key (read, then moved)."""
    return CUSTOMER_INDEX_PREFIX + customer_id


def sealed_version(sealed: str) -> int | None:
    """The envelope version a sealed value was made with (None: not a sealed value)."""
    match = _SEALED.fullmatch(sealed)
    return int(match.group(1)) if match else None


def index_version(name: str) -> int | None:
    """The pepper version of an (email or customer) index key name (None: a pre-sealing name)."""
    match = _INDEX.fullmatch(name)
    return int(match.group(1)) if match else None


class AccountSealer:
    """Seals and opens account fields and names the email index, with the newest key material
    ``material()`` returns (a verifier replica's reloads are picked up on the next call)."""

    def __init__(self, material: KeyMaterial | Callable[[], KeyMaterial]):
        self._material = material if callable(material) else (lambda: material)
        self._built_from: KeyMaterial | None = None
        self._ring: Keyring | None = None

    def __repr__(self) -> str:
        return "AccountSealer()"

    def _current(self) -> Keyring:
        material = self._material()
        if material is not self._built_from or self._ring is None:
            self._ring = Keyring.of(material)
            self._built_from = material
        return self._ring

    @property
    def envelope_version(self) -> int:
        return self._current().envelope_version

    @property
    def pepper_version(self) -> int:
        return self._current().pepper_version

    def seal(self, value: str) -> str:
        ring = self._current()
        token = ring.fernets[ring.envelope_version].encrypt(value.encode()).decode()
        return f"v{ring.envelope_version}:{token}"

    def open(self, sealed: str) -> str:
        """The value back; raises SealError (without the value) if it does not open."""
        match = _SEALED.fullmatch(sealed)
        fernet = self._current().fernets.get(int(match.group(1))) if match else None
        if fernet is None:
            raise SealError("a sealed account field is under an envelope key this process lacks")
        try:
            return fernet.decrypt(match.group(2).encode()).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise SealError("a sealed account field does not open") from None

    def email_index_key(self, email: str, version: int | None = None) -> str:
        """The index name of a normalised ``email`` under pepper ``version`` (default: current)."""
        return self._keyed(EMAIL_INDEX_PREFIX, _INDEX_CONTEXT, email, version)

    def _keyed(self, prefix: str, context: bytes, value: str, version: int | None) -> str:
        ring = self._current()
        version = ring.pepper_version if version is None else version
        digest = hmac.new(ring.peppers[version], context + value.encode(), hashlib.sha256).hexdigest()
        return f"{prefix}v{version}:{digest}"

    def customer_index_key(self, customer_id: str, version: int | None = None) -> str:
        """The index name of a Stripe customer id under pepper ``version`` (default: current)."""
        return self._keyed(CUSTOMER_INDEX_PREFIX, _CUSTOMER_CONTEXT, customer_id, version)

    def customer_index_candidates(self, customer_id: str) -> list[str]:
        """Every name the index of ``customer_id`` may have: the current pepper's first, then
        older peppers', then the pre-sealing name."""
        versions = sorted(self._current().peppers, reverse=True)
        return [self.customer_index_key(customer_id, v) for v in versions] + [legacy_customer_index_key(customer_id)]

    def email_index_candidates(self, email: str) -> list[str]:
        """Every name the index of ``email`` may have: the current pepper's first, then older
        peppers', then the pre-sealing SHA-256 name."""
        versions = sorted(self._current().peppers, reverse=True)
        return [self.email_index_key(email, v) for v in versions] + [legacy_email_index_key(email)]
