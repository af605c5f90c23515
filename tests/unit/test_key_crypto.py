import base64
import secrets
from dataclasses import replace

import pytest
from cryptography.fernet import Fernet, InvalidToken

from actors.keys.crypto import KeyCrypto
from core.key_format import generate_key
from tests.support.key_material import material


def test_sealed_key_verifies_and_holds_no_plaintext():
    crypto = KeyCrypto(material())
    plaintext, parsed = generate_key()
    sealed = crypto.seal(plaintext, parsed.secret)
    assert crypto.matches(parsed.secret, sealed.digest, sealed.pepper_version)
    assert parsed.secret not in repr(sealed)
    assert parsed.secret not in sealed.ciphertext and parsed.secret not in sealed.digest


def test_wrong_secret_or_unknown_pepper_version_fails():
    crypto = KeyCrypto(material())
    plaintext, parsed = generate_key()
    other, other_parsed = generate_key()
    sealed = crypto.seal(plaintext, parsed.secret)
    assert not crypto.matches(other_parsed.secret, sealed.digest, sealed.pepper_version)
    assert not crypto.matches(parsed.secret, sealed.digest, 99)


def test_digest_depends_on_the_pepper():
    _, parsed = generate_key()
    assert KeyCrypto(material()).digest(parsed.secret) != KeyCrypto(material()).digest(parsed.secret)


def test_ciphertext_round_trips_and_is_authenticated():
    crypto = KeyCrypto(material())
    plaintext, parsed = generate_key()
    sealed = crypto.seal(plaintext, parsed.secret)
    assert crypto.open(sealed.ciphertext) == plaintext
    tampered = sealed.ciphertext[:-4] + ("AAAA" if not sealed.ciphertext.endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidToken):
        crypto.open(tampered)


def test_newest_versions_seal_and_older_ones_still_open_and_verify():
    old = material()
    plaintext, parsed = generate_key()
    old_sealed = KeyCrypto(old).seal(plaintext, parsed.secret)
    rotated = replace(
        old,
        peppers={**old.peppers, 2: secrets.token_bytes(32)},
        envelope_keys={**old.envelope_keys, 2: Fernet.generate_key()},
    )
    crypto = KeyCrypto(rotated)
    new_sealed = crypto.seal(plaintext, parsed.secret)
    assert (new_sealed.pepper_version, new_sealed.envelope_version) == (2, 2)
    assert crypto.open(old_sealed.ciphertext) == plaintext
    assert crypto.matches(parsed.secret, old_sealed.digest, 1)
    # The new ciphertext is under key 2 only: the old keyring cannot open it.
    with pytest.raises(InvalidToken):
        KeyCrypto(old).open(new_sealed.ciphertext)


def test_key_material_repr_shows_versions_not_keys():
    m = material()
    text = repr(m)
    assert base64.urlsafe_b64encode(m.peppers[1]).decode()[:10] not in text
    assert m.envelope_keys[1].decode()[:10] not in text
