import re

from core.key_format import generate_key, looks_like_leaked_key, parse_key


def test_generated_key_has_the_documented_format_and_parses_back():
    plaintext, parsed = generate_key()
    assert re.fullmatch(r"neuro_[a-z0-9]{8}_[0-9A-Za-z]{38}", plaintext)
    assert plaintext.startswith(parsed.prefix + "_")
    assert parse_key(plaintext) == parsed


def test_keys_are_unique():
    assert len({generate_key()[0] for _ in range(200)}) == 200


def test_a_single_changed_character_fails_the_checksum():
    plaintext, _ = generate_key()
    for position in range(len("neuro_"), len(plaintext)):
        if plaintext[position] == "_":
            continue
        replacement = "a" if plaintext[position] != "a" else "b"
        typo = plaintext[:position] + replacement + plaintext[position + 1:]
        assert parse_key(typo) is None, f"typo at {position} accepted"


def test_malformed_keys_are_rejected():
    plaintext, _ = generate_key()
    for bad in ["", "neuro_", plaintext[:-1], plaintext + "x", "sk-" + plaintext[6:],
                plaintext.upper(), " " + plaintext]:
        assert parse_key(bad) is None


def test_the_secret_never_shows_in_repr():
    plaintext, parsed = generate_key()
    assert parsed.secret not in repr(parsed)


def test_leaked_keys_are_recognised_offline_in_free_text():
    key_a, parsed_a = generate_key()
    key_b, _ = generate_key()
    corrupted = key_b[:-1] + ("0" if key_b[-1] != "0" else "1")
    text = f"config = {{'api_key': '{key_a}'}} and also {corrupted} somewhere"
    assert looks_like_leaked_key(text) == [parsed_a.prefix]
