"""Shared views: parked until asked for, taken once, bounded."""

from __future__ import annotations

import numpy as np

from empirio._core.views import ViewCache

KEY = "sk-test-0123456789abcdef"


def test_parked_views_are_taken_once_and_repeats_share_them() -> None:
    views = ViewCache()
    views.park("query", ["a", "b"], np.eye(2, dtype=np.float32), [{1: 0.5}, {2: 0.25}])
    assert len(views) == 4
    got = views.take("dense", "query", ["a", "c", "a"])
    assert got[1] is None
    assert got[0] is got[2]
    assert views.take("dense", "query", ["a"]) == [None]  # taken
    assert views.take("sparse", "document", ["b"]) == [None]  # kinds are apart
    assert views.take("sparse", "query", ["b"]) == [{2: 0.25}]


def test_parked_views_are_bounded_oldest_first() -> None:
    views = ViewCache(max_items=3)
    for i in range(5):
        views.park("document", [f"t{i}"], np.ones((1, 4), np.float32), None)
    assert len(views) == 3
    assert views.take("dense", "document", ["t0", "t4"])[0] is None
    small = ViewCache(max_bytes=1000)
    small.park("document", ["x", "y"], np.ones((2, 256), np.float32), None)
    assert len(small) == 0
    assert small.nbytes == 0
