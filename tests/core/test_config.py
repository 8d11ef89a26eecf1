"""Configuration values: what 0 and None mean for a rate, and which URLs are which."""

from __future__ import annotations

import pytest

from empirio._core.config import check_rate, is_loopback_url, is_redis_url, resolve_rate

KEY = "sk-test-0123456789abcdef"


def test_zero_and_none_mean_unpaced_wherever_a_rate_comes_from() -> None:
    assert check_rate("rpm", 0) is None
    assert check_rate("rpm", None) is None
    assert check_rate("rpm", 50) == 50
    for bad in (-1, float("nan"), "fast", True):
        with pytest.raises(ValueError, match="rpm"):
            check_rate("rpm", bad)
    assert resolve_rate(None, "X_RPM", 50.0, {"X_RPM": "300"}) is None


def test_urls_are_told_apart() -> None:
    assert is_loopback_url("http://127.0.0.1:8000/v1")
    assert is_loopback_url("http://localhost/v1")
    assert not is_loopback_url("http://10.0.0.1/v1")
    assert is_redis_url("redis://h:6379/0")
    assert is_redis_url("rediss://h/0")
    assert not is_redis_url("machine")
    assert not is_redis_url(None)
