"""The ingress's cache of verified keys (serve_app.callers.key_cache): a hit needs the whole
presented key, invalidations drop what they name, and a verification that raced an
invalidation never caches its stale answer."""

from __future__ import annotations

from actors.keys.store import VerifiedKey
from core.scope import UNRESTRICTED, Scope
from serve_app.callers.key_cache import VerifiedKeyCache, fingerprint

KEY_A = "neuro_aaaaaaaa_secret-one"
KEY_B = "neuro_bbbbbbbb_secret-two"
KEY_C = "neuro_cccccccc_secret-three"


def verified(prefix: str, account: str = "acct_1", scope: Scope = UNRESTRICTED) -> VerifiedKey:
    return VerifiedKey(prefix=prefix, account_id=account, scope=scope)


def filled(*entries: tuple[str, VerifiedKey]) -> VerifiedKeyCache:
    cache = VerifiedKeyCache()
    for key, answer in entries:
        cache.put(fingerprint(key), answer, cache.generation)
    return cache


def test_the_fingerprint_is_of_the_whole_key():
    assert fingerprint(KEY_A) == fingerprint(KEY_A)
    assert fingerprint(KEY_A) != fingerprint(KEY_A + "x")
    assert len(fingerprint(KEY_A)) == 32  # SHA-256: the key itself is not kept
    assert KEY_A.encode() not in fingerprint(KEY_A)


def test_a_hit_needs_the_same_prefix_and_the_same_whole_key():
    answer = verified("neuro_aaaaaaaa", scope=Scope(in_house_only=True))
    cache = filled((KEY_A, answer))
    assert cache.get("neuro_aaaaaaaa", fingerprint(KEY_A)) == answer  # scope rides along
    # A right prefix with a wrong secret never rides a cached success.
    assert cache.get("neuro_aaaaaaaa", fingerprint("neuro_aaaaaaaa_guessed")) is None
    assert cache.get("neuro_bbbbbbbb", fingerprint(KEY_A)) is None
    assert cache.get("neuro_aaaaaaaa", b"") is None


def test_invalidating_a_prefix_drops_only_that_key():
    cache = filled((KEY_A, verified("neuro_aaaaaaaa")), (KEY_B, verified("neuro_bbbbbbbb")))
    cache.invalidate("neuro_aaaaaaaa")
    assert cache.get("neuro_aaaaaaaa", fingerprint(KEY_A)) is None
    assert cache.get("neuro_bbbbbbbb", fingerprint(KEY_B)) is not None
    cache.invalidate("neuro_unknown0")  # a key this replica never cached: nothing else goes
    assert cache.get("neuro_bbbbbbbb", fingerprint(KEY_B)) is not None


def test_invalidating_an_account_drops_all_its_keys_and_no_others():
    cache = filled((KEY_A, verified("neuro_aaaaaaaa", "acct_1")), (KEY_B, verified("neuro_bbbbbbbb", "acct_1")),
                   (KEY_C, verified("neuro_cccccccc", "acct_2")))
    cache.invalidate_account("acct_1")
    assert cache.get("neuro_aaaaaaaa", fingerprint(KEY_A)) is None
    assert cache.get("neuro_bbbbbbbb", fingerprint(KEY_B)) is None
    assert cache.get("neuro_cccccccc", fingerprint(KEY_C)) is not None
    # Cached again after the change: a later account invalidation still finds it.
    cache.put(fingerprint(KEY_A), verified("neuro_aaaaaaaa", "acct_1"), cache.generation)
    cache.invalidate_account("acct_1")
    assert cache.get("neuro_aaaaaaaa", fingerprint(KEY_A)) is None


def test_a_key_dropped_by_prefix_is_not_dropped_again_with_its_account_by_mistake():
    """After a prefix invalidation the account's index forgets the prefix, so re-caching it
    for another account is not undone by the first account's invalidation."""
    cache = filled((KEY_A, verified("neuro_aaaaaaaa", "acct_1")))
    cache.invalidate("neuro_aaaaaaaa")
    cache.put(fingerprint(KEY_A), verified("neuro_aaaaaaaa", "acct_2"), cache.generation)
    cache.invalidate_account("acct_1")
    assert cache.get("neuro_aaaaaaaa", fingerprint(KEY_A)).account_id == "acct_2"


def test_clear_drops_everything():
    cache = filled((KEY_A, verified("neuro_aaaaaaaa", "acct_1")), (KEY_C, verified("neuro_cccccccc", "acct_2")))
    cache.clear()
    assert cache.get("neuro_aaaaaaaa", fingerprint(KEY_A)) is None
    assert cache.get("neuro_cccccccc", fingerprint(KEY_C)) is None


def test_a_verification_that_raced_an_invalidation_is_not_cached():
    for invalidation in (lambda c: c.invalidate("neuro_aaaaaaaa"), lambda c: c.invalidate("neuro_other000"),
                         lambda c: c.invalidate_account("acct_1"), lambda c: c.clear()):
        cache = VerifiedKeyCache()
        generation = cache.generation  # read before asking the verifier
        invalidation(cache)  # e.g. the key was revoked while the verifier answered
        cache.put(fingerprint(KEY_A), verified("neuro_aaaaaaaa"), generation)
        assert cache.get("neuro_aaaaaaaa", fingerprint(KEY_A)) is None
        # The next verification, started after the invalidation, may cache.
        cache.put(fingerprint(KEY_A), verified("neuro_aaaaaaaa"), cache.generation)
        assert cache.get("neuro_aaaaaaaa", fingerprint(KEY_A)) is not None


def test_a_put_of_an_existing_prefix_replaces_the_whole_key_it_matches():
    cache = filled((KEY_A, verified("neuro_aaaaaaaa")))
    other_secret = "neuro_aaaaaaaa_secret-new"
    cache.put(fingerprint(other_secret), verified("neuro_aaaaaaaa"), cache.generation)
    assert cache.get("neuro_aaaaaaaa", fingerprint(other_secret)) is not None
    assert cache.get("neuro_aaaaaaaa", fingerprint(KEY_A)) is None


def test_beyond_max_entries_the_least_recently_cached_key_goes():
    cache = VerifiedKeyCache(max_entries=2)
    keys = [f"neuro_{n:08d}_secret" for n in range(3)]
    for n, key in enumerate(keys):
        cache.put(fingerprint(key), verified(f"neuro_{n:08d}", account=f"acct_{n}"), cache.generation)
    assert cache.get("neuro_00000000", fingerprint(keys[0])) is None
    assert cache.get("neuro_00000001", fingerprint(keys[1])) is not None
    assert cache.get("neuro_00000002", fingerprint(keys[2])) is not None
    # Re-caching a key makes it the most recent: the other one goes next.
    cache.put(fingerprint(keys[1]), verified("neuro_00000001", account="acct_1"), cache.generation)
    cache.put(fingerprint(keys[0]), verified("neuro_00000000", account="acct_0"), cache.generation)
    assert cache.get("neuro_00000002", fingerprint(keys[2])) is None
    assert cache.get("neuro_00000001", fingerprint(keys[1])) is not None
    # An evicted key's account index was cleaned: invalidating it touches nothing else.
    cache.invalidate_account("acct_2")
    assert cache.get("neuro_00000000", fingerprint(keys[0])) is not None
