"""Requests in flight from rate x latency, with AIMD backoff, pure."""

from __future__ import annotations

import pytest

from empirio._core.concurrency import AUTO_CEILING, UNPACED_CONCURRENCY, Concurrency
from empirio._core.pace import Limits


def test_concurrency_halves_once_per_burst_and_grows_back() -> None:
    c = Concurrency(16)
    assert c.allowed == 16
    c.on_throttle(sent_at=1.0, now=2.0)
    assert c.allowed == 8
    c.on_throttle(sent_at=1.5, now=2.1)  # sent before the cut: same overload
    assert c.allowed == 8
    c.on_throttle(sent_at=2.5, now=3.0)
    assert c.allowed == 4
    for _ in range(4 + 5 + 6 + 7):
        c.on_success()
    assert c.allowed >= 7
    for _ in range(1000):
        c.on_success()
    assert c.allowed == 16


def test_concurrency_never_below_one() -> None:
    c = Concurrency(2)
    for k in range(10):
        c.on_throttle(sent_at=float(k), now=float(k))
    assert c.allowed == 1
    with pytest.raises(ValueError, match="max_concurrency"):
        Concurrency(0)


def test_requests_in_flight_follow_rate_times_latency() -> None:
    c = Concurrency(AUTO_CEILING, auto=True, limits=Limits(1200, None))
    assert c.allowed == 31  # 20/s x 1 s (assumed before any answer) x 1.5 + 1
    for _ in range(64):
        c.observe(2.0, 500)
    assert c.allowed == 61  # 2 s measured
    c.waiting(4.0)  # the oldest request out is slower still
    assert c.allowed == 121
    c.waiting(0.0)
    c.on_throttle(sent_at=1.0, now=2.0)
    assert c.allowed == 61  # paced: a 429 is the pacer's to answer, the rate still needs 61
    unpaced = Concurrency(AUTO_CEILING, auto=True, limits=Limits(None, None))
    unpaced.on_throttle(sent_at=1.0, now=2.0)
    assert unpaced.allowed == UNPACED_CONCURRENCY // 2  # halved from what was allowed
    tokens = Concurrency(AUTO_CEILING, auto=True, limits=Limits(None, 600_000))
    tokens.observe(1.0, 1000)  # 10,000 tokens a second / 1,000 a request = 10 requests a second
    assert tokens.allowed == 16
    assert Concurrency(AUTO_CEILING, auto=True, limits=Limits(None, None)).allowed == (
        UNPACED_CONCURRENCY
    )
    assert Concurrency(16, limits=Limits(1200, None)).allowed == 16  # a ceiling the user chose
    assert Concurrency(16).allowed == 16
