"""Distinct texts: each sent once, spread back to every place it had."""

from __future__ import annotations

from empirio._core.distinct import Distinct
from empirio._core.result import EmbeddingResult, Usage

KEY = "sk-test-0123456789abcdef"


def test_distinct_spreads_rows_and_copies_repeated_lists() -> None:
    d = Distinct.of(["a", "b", "a"])
    assert d.texts == ["a", "b"]
    assert d.repeats == 1
    assert d.first == (0, 1)
    rows = d.spread_rows([[1.0], [2.0]])
    assert rows == [[1.0], [2.0], [1.0]]
    rows[0][0] = 9.0
    assert rows[2] == [1.0]  # a repeat is its own list
    result = d.spread(EmbeddingResult(None, [{1: 1.0}, {2: 2.0}], Usage()))
    assert result.sparse == [{1: 1.0}, {2: 2.0}, {1: 1.0}]
    assert Distinct.of(["a", "b"]).where is None
