"""The option types: each runtime tuple is its Literal."""

from __future__ import annotations

from typing import get_args

from empirio._core import types

KEY = "sk-test-0123456789abcdef"


def test_each_runtime_tuple_is_its_literal() -> None:
    assert types.KINDS == get_args(types.Kind) == ("document", "query")
    assert types.OUTPUTS == ("dense", "sparse", "both")
    assert set(types.OVERFLOWS) == {"truncate", "chunk", "error"}
    assert set(types.LIMIT_SOURCES) == {"set", "default", "server"}
