"""Cache keys and values: keys change with everything a vector depends on and with the secret;
entries are sealed, and an entry that fails its MAC or is not a vector the service sends is a
miss."""

from __future__ import annotations

import hashlib
import hmac
import os

import numpy as np
import pytest

from empirio._core.cache_keys import (
    MAC_BYTES,
    NONCE_BYTES,
    CacheScope,
    cache_secret,
    decode_dense_rows,
    decode_sparse,
    encode_dense,
    encode_sparse,
    endpoint_identity,
    open_dense,
    open_found,
    open_sparse,
)
from empirio._core.cache_keys import seal as seal_with

HEAD = 1 + NONCE_BYTES + MAC_BYTES  # the format byte, the nonce, the tag

KEY = "sk-test-0123456789abcdef"
SECRET = cache_secret(KEY)


def seal(secret: bytes, pairs: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Sealed as the client seals: random nonces."""
    return seal_with(secret, pairs, os.urandom(NONCE_BYTES * len(pairs)))


def _scope(*fields: object, secret: bytes = SECRET) -> CacheScope:
    endpoint, model, dims = fields or ("api.empiriolabs.ai/v1", "text-embedding-v4", 1024)
    return CacheScope(str(endpoint), str(model), int(dims), "", "", secret)  # type: ignore[call-overload]


def _unit(n: int, dims: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dims)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_cache_keys_change_with_everything_a_vector_depends_on() -> None:
    scope = _scope()
    (base,) = scope.keys("dense", ["a"], [""])
    others = [
        _scope("other/v1", "text-embedding-v4", 1024).keys("dense", ["a"], [""]),
        _scope("api.empiriolabs.ai/v1", "m2", 1024).keys("dense", ["a"], [""]),
        _scope("api.empiriolabs.ai/v1", "text-embedding-v4", 512).keys("dense", ["a"], [""]),
        scope.keys("sparse", ["a"], [""]),
        scope.keys("dense", ["a"], ["chunk"]),
        scope.keys("dense", ["b"], [""]),
        _scope(secret=cache_secret("another key of 16+ chars")).keys("dense", ["a"], [""]),
    ]
    assert len({base, *(k[0] for k in others)}) == 8
    assert scope.keys("dense", ["a"], [""]) == [base]  # and only with those


def test_the_secret_is_not_shown_and_not_the_key() -> None:
    assert KEY.encode() not in SECRET
    assert len(SECRET) == 32
    assert SECRET.hex() not in repr(_scope())
    assert "secret" not in repr(_scope())


def test_the_seal_is_aes_gcm_over_key_and_value() -> None:
    """An entry is its format byte, its nonce, then the tag of AES-256-GCM (under a key derived
    from the secret) over the key and the value, then the value, as pyca's AESGCM makes it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    value = encode_dense(_unit(1, 1024)[0])
    nonce = bytes(range(NONCE_BYTES))
    ((key, sealed),) = seal_with(SECRET, [("k" * 32, value)], nonce)
    aes_key = hashlib.blake2b(SECRET, digest_size=32, person=b"empirio-cacheaes").digest()
    tag = AESGCM(aes_key).encrypt(nonce, b"", key.encode() + b"\0" + value)
    assert sealed == b"\x02" + nonce + tag + value
    assert len(tag) == MAC_BYTES


def test_each_entry_gets_its_own_nonce_and_too_few_are_refused() -> None:
    pairs = [("k" * 32, b"v" * 8)] * 2
    nonces = os.urandom(2 * NONCE_BYTES)
    first, second = (v for _, v in seal_with(SECRET, pairs, nonces))
    assert first[1 : 1 + NONCE_BYTES] == nonces[:NONCE_BYTES]
    assert second[1 : 1 + NONCE_BYTES] == nonces[NONCE_BYTES:]
    assert first != second  # the same vector, two tags
    with pytest.raises(ValueError, match="12 bytes of nonce per pair, got 12"):
        seal_with(SECRET, pairs, nonces[:NONCE_BYTES])


def _legacy(secret: bytes, key: str, value: bytes) -> bytes:
    """An entry of the format before: HMAC-SHA-256 over a label, the key and the value, in
    front (16 bytes)."""
    label = b"empirio-cachemac\0"
    return hmac.digest(secret, label + key.encode() + b"\0" + value, "sha256")[:16] + value


def test_entries_of_the_format_before_still_open() -> None:
    """A cache an earlier version wrote is not paid for again: its entries open, even one whose
    MAC starts with the new format's byte; a forged or moved one is refused as before."""
    rows = _unit(300, 8)
    keys = _scope().keys("dense", [str(i) for i in range(300)], [""] * 300)
    legacy = [_legacy(SECRET, k, encode_dense(r)) for k, r in zip(keys, rows, strict=True)]
    assert any(e[:1] == b"\x02" for e in legacy)  # one in 256 starts with the format byte
    hits, got, rejected = open_dense(SECRET, keys, legacy, 8)
    assert hits == list(range(300))
    assert rejected == 0
    np.testing.assert_array_equal(got, rows)
    other = _legacy(cache_secret("someone else's secret!"), keys[0], encode_dense(rows[0]))
    hits, _, rejected = open_dense(SECRET, keys[:3], [other, legacy[0], legacy[2]], 8)
    assert hits == [2]
    assert rejected == 2


def test_sealed_dense_entries_open_and_any_change_is_a_miss() -> None:
    rows = _unit(5, 8)
    keys = _scope().keys("dense", list("abcde"), [""] * 5)
    sealed = [
        v for _, v in seal(SECRET, [(k, encode_dense(r)) for k, r in zip(keys, rows, strict=True)])
    ]
    assert all(len(v) == HEAD + 32 for v in sealed)
    hits, got, rejected = open_dense(SECRET, keys, sealed, 8)
    assert hits == [0, 1, 2, 3, 4]
    assert rejected == 0
    np.testing.assert_array_equal(got, rows)

    poisoned = list(sealed)
    poisoned[0] = sealed[1]  # a vector moved under another key: its MAC names the other key
    flipped = bytearray(sealed[2])
    flipped[-1] ^= 1
    poisoned[2] = bytes(flipped)  # one bit of the vector
    poisoned[3] = None  # missing: a miss, not a rejection
    poisoned[4] = seal(cache_secret("someone else's secret!"), [(keys[4], encode_dense(rows[4]))])[
        0
    ][1]
    hits, got, rejected = open_dense(SECRET, keys, poisoned, 8)
    assert hits == [1]
    assert rejected == 3
    np.testing.assert_array_equal(got, rows[[1]])


@pytest.mark.parametrize(
    "at", [0, 1, NONCE_BYTES, 1 + NONCE_BYTES, HEAD - 1, HEAD, -1], ids=lambda at: f"byte{at}"
)
def test_one_bit_anywhere_in_an_entry_is_a_miss(at: int) -> None:
    """The format byte, the nonce, the tag, the vector: one bit flipped anywhere fails."""
    (key,) = _scope().keys("dense", ["a"], [""])
    ((_, sealed),) = seal(SECRET, [(key, encode_dense(_unit(1, 8)[0]))])
    flipped = bytearray(sealed)
    flipped[at] ^= 1
    assert open_dense(SECRET, [key], [sealed], 8)[0] == [0]
    assert open_dense(SECRET, [key], [bytes(flipped)], 8)[0::2] == ([], 1)


@pytest.mark.parametrize(
    "row",
    [
        np.full(8, np.nan, np.float32),
        np.zeros(8, np.float32),
        np.full(8, 32000 / np.sqrt(8), np.float32),
        np.array([np.inf] + [0.0] * 7, np.float32),
    ],
    ids=["nan", "zero", "norm-32000", "inf"],
)
def test_a_validly_sealed_entry_that_is_no_unit_vector_is_refused(row: np.ndarray) -> None:
    """Whoever holds the secret (a bug, a buggy writer) still cannot make a bad vector count."""
    keys = _scope().keys("dense", ["a", "b"], ["", ""])
    good = _unit(1, 8)[0]
    sealed = [
        v for _, v in seal(SECRET, [(keys[0], encode_dense(row)), (keys[1], encode_dense(good))])
    ]
    hits, got, rejected = open_dense(SECRET, keys, sealed, 8)
    assert hits == [1]
    assert rejected == 1
    assert got.shape == (1, 8)


def test_wrong_sizes_and_short_entries_are_refused() -> None:
    keys = _scope().keys("dense", ["a", "b", "c"], [""] * 3)
    rows = _unit(1, 16)
    sealed = [
        seal(SECRET, [(keys[0], encode_dense(rows[0]))])[0][1],  # 16 dims where 8 are asked
        b"short",
        b"",
    ]
    hits, got, rejected = open_dense(SECRET, keys, sealed, 8)
    assert hits == []
    assert rejected == 3
    assert got.shape == (0, 8)


def test_sparse_entries_are_sealed_and_checked() -> None:
    keys = _scope().keys("sparse", list("abcd"), [""] * 4)
    vec = {7: 0.25, 100: 1.5}
    bad_weight = np.array([3], "<i4").tobytes() + np.array([np.nan], "<f8").tobytes()
    negative_id = np.array([-3], "<i4").tobytes() + np.array([0.5], "<f8").tobytes()
    pairs = [(keys[0], encode_sparse(vec)), (keys[1], bad_weight), (keys[2], negative_id)]
    sealed = [v for _, v in seal(SECRET, pairs)] + [None]
    found, rejected = open_sparse(SECRET, keys, sealed)
    assert found == [vec, None, None, None]
    assert rejected == 2
    assert open_sparse(cache_secret("x" * 16), keys[:1], sealed[:1]) == ([None], 1)


def test_both_views_are_found_only_where_both_hold() -> None:
    texts = list("abc")
    scope = _scope(secret=SECRET)
    keys = {v: scope.keys(v, texts, [""] * 3) for v in ("dense", "sparse")}
    rows = _unit(3, 8)
    dense = [
        v
        for _, v in seal(
            SECRET, [(k, encode_dense(r)) for k, r in zip(keys["dense"], rows, strict=True)]
        )
    ]
    sparse: list[bytes | None] = [
        v
        for _, v in seal(
            SECRET, [(k, encode_sparse({i: 1.0})) for i, k in enumerate(keys["sparse"])]
        )
    ]
    sparse[1] = None
    dense[2] = dense[0]
    found = open_found(SECRET, keys, {"dense": dense, "sparse": sparse}, 8)
    assert found.hits == (0,)
    assert found.rejected == 1
    assert found.sparse == ({0: 1.0},)
    assert found.dense is not None
    np.testing.assert_array_equal(found.dense, rows[[0]])


def test_cache_values_round_trip_and_damage_is_a_miss() -> None:
    row = np.array([0.5, -1.0], np.float32)
    assert decode_dense_rows(encode_dense(row) * 2, 2).tolist() == [[0.5, -1.0]] * 2
    vec = {7: 0.25, 100: 1.5}
    assert decode_sparse(encode_sparse(vec)) == vec
    assert decode_sparse(b"\x00\x01\x02") is None
    assert endpoint_identity("https://API.empiriolabs.ai/v1/") == "api.empiriolabs.ai/v1"
    assert endpoint_identity("http://127.0.0.1:9000/v1", "emulator-hashed-0") == (
        "local:emulator-hashed-0/v1"
    )
