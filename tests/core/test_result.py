"""Results and usage: rows as Python floats, usage that adds up and prices."""

from __future__ import annotations

import numpy as np
import pytest

from empirio._core.result import EmbeddingResult, Usage, UsageMeter

KEY = "sk-test-0123456789abcdef"


def test_usage_adds_subtracts_and_prices() -> None:
    u = Usage(requests=2, input_tokens=1_000_000) + Usage(requests=1, rate_limited=1)
    assert (u.requests, u.rate_limited) == (3, 1)
    assert u.cost_usd == pytest.approx(0.07)
    assert (u - Usage(requests=1)).requests == 2
    assert str(Usage(requests=1)).startswith("1 request,")
    meter = UsageMeter()
    meter.add(u)
    assert meter.usage == u


def test_a_result_gives_rows_and_refuses_rows_it_does_not_hold() -> None:
    r = EmbeddingResult(np.arange(40, dtype=np.float32).reshape(20, 2), None, Usage())
    assert len(r) == 20
    assert r.dense_rows()[19] == [38.0, 39.0]
    with pytest.raises(ValueError, match="no dense"):
        EmbeddingResult(None, [{}], Usage()).dense_rows()


def test_usage_arithmetic_covers_every_field() -> None:
    """``+`` and ``-`` are written field by field (for speed): none may be forgotten."""
    import dataclasses

    for f in dataclasses.fields(Usage):
        one, two = Usage(**{f.name: 1}), Usage(**{f.name: 2})
        assert one + one == two, f.name
        assert two - one == one, f.name
