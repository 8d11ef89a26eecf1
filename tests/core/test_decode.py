"""Reading responses, pure: every way a 2xx body can break the contract is an
``APIResponseValidationError`` naming what is wrong (and never a crash)."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from empirio import APIResponseValidationError, UnsupportedFeatureError
from empirio._core.decode import decode_success


def body(data: list[dict[str, Any]], **extra: Any) -> bytes:
    doc = {"object": "list", "data": data, "model": "text-embedding-v4"}
    doc["usage"] = {"prompt_tokens": 3, "total_tokens": 3}
    doc.update(extra)
    return json.dumps(doc).encode()


def item(index: int, embedding: Any = None, **extra: Any) -> dict[str, Any]:
    out = {"object": "embedding", "index": index, "embedding": embedding}
    out.update(extra)
    return out


def b64(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


GOOD = [0.6, 0.8]

CASES = [
    ("not JSON", b"<html>bad gateway</html>", "not a valid embeddings response"),
    ("no data", json.dumps({"object": "list"}).encode(), "not a valid embeddings response"),
    ("data not a list", body([]).replace(b'"data": []', b'"data": 5'), "not a valid"),
    ("too few items", body([item(0, GOOD)]), "expected indices 0..1"),
    ("too many items", body([item(i, GOOD) for i in range(3)]), "expected indices 0..1"),
    ("duplicate index", body([item(0, GOOD), item(0, GOOD)]), "expected indices 0..1"),
    ("index out of range", body([item(0, GOOD), item(5, GOOD)]), "expected indices 0..1"),
    ("no dense vector", body([item(0, GOOD), item(1, None)]), "embedding 1 has no dense"),
    ("wrong length", body([item(0, GOOD), item(1, [0.1, 0.2, 0.3])]), "3 components"),
    ("bad base64", body([item(0, GOOD), item(1, "!!!not base64!!!")]), "not valid base64"),
    ("base64 not float32", body([item(0, GOOD), item(1, "AAAAAAA=")]), "not a multiple of 4"),
    ("base64 wrong length", body([item(0, GOOD), item(1, b64([0.1, 0.2, 0.3]))]), "3 components"),
]


@pytest.mark.parametrize(("name", "raw", "message"), CASES, ids=[c[0] for c in CASES])
def test_every_broken_body_is_a_validation_error(name: str, raw: bytes, message: str) -> None:
    with pytest.raises(APIResponseValidationError, match=message):
        decode_success(raw, n_inputs=2, dimensions=2, dense=True, sparse=False)


def test_a_good_body_in_any_order_decodes_in_input_order() -> None:
    raw = body([item(1, b64([0.0, 1.0])), item(0, [1.0, 0.0])])
    got = decode_success(raw, n_inputs=2, dimensions=2, dense=True, sparse=False)
    assert got.dense is not None
    np.testing.assert_array_equal(got.dense, [[1.0, 0.0], [0.0, 1.0]])
    assert got.tokens == 3


def test_missing_sparse_is_an_unsupported_feature() -> None:
    raw = body([item(0, GOOD), item(1, GOOD)])
    with pytest.raises(UnsupportedFeatureError, match="does not support sparse"):
        decode_success(raw, n_inputs=2, dimensions=2, dense=True, sparse=True)
