"""Cache keys and values: keys change with everything a vector depends on."""

from __future__ import annotations

import numpy as np

from empirio._core.cache_keys import (
    CacheScope,
    decode_dense_rows,
    decode_sparse,
    encode_dense,
    encode_sparse,
    endpoint_identity,
)

KEY = "sk-test-0123456789abcdef"


def test_cache_keys_change_with_everything_a_vector_depends_on() -> None:
    scope = CacheScope("api.empiriolabs.ai/v1", "text-embedding-v4", 1024, "", "")
    (base,) = scope.keys("dense", ["a"], [""])
    others = [
        CacheScope("other/v1", "text-embedding-v4", 1024, "", "").keys("dense", ["a"], [""]),
        CacheScope("api.empiriolabs.ai/v1", "m2", 1024, "", "").keys("dense", ["a"], [""]),
        CacheScope("api.empiriolabs.ai/v1", "text-embedding-v4", 512, "", "").keys(
            "dense", ["a"], [""]
        ),
        scope.keys("sparse", ["a"], [""]),
        scope.keys("dense", ["a"], ["chunk"]),
        scope.keys("dense", ["b"], [""]),
    ]
    assert len({base, *(k[0] for k in others)}) == 7
    assert scope.keys("dense", ["a"], [""]) == [base]  # and only with those


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
