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


@pytest.mark.parametrize(
    ("url", "host", "port", "password", "display"),
    [
        ("redis://localhost", "localhost", 6379, None, "redis://localhost:6379/0"),
        ("redis://:pw@h:7000/2", "h", 7000, "pw", "redis://h:7000/2"),
        ("rediss://user:p/w?x#y@h.example:6380/1", "h.example", 6380, "p/w?x#y", None),
        ("redis://:p@ss@h/0", "h", 6379, "p@ss", "redis://h:6379/0"),
        ("redis://:p%2Fw@h/0", "h", 6379, "p/w", "redis://h:6379/0"),  # escaped: decoded
        ("redis://:pw@[::1]:6379/0?ssl_cert_reqs=none", "[::1]", 6379, "pw", None),
    ],
)
def test_redis_urls_are_read_whole_and_shown_without_their_password(
    url: str, host: str, port: int, password: str | None, display: str | None
) -> None:
    from redis.connection import parse_url

    from empirio._core.config import parse_redis_url

    read = parse_redis_url(url, "share_budget")
    assert (read.host, read.port, read.password) == (host, port, password)
    if display is not None:
        assert read.display == display
    if password:
        assert password not in read.display
        assert password not in repr(read)
    # What redis-py is given, it reads back whole.
    assert parse_url(read.connect_url()).get("password") == password


@pytest.mark.parametrize("url", ["redis://:p/w@h:port/0", "redis://:p/w@/0", "redis://:p/w@h:0/0"])
def test_an_unreadable_redis_url_says_why_without_the_password(url: str) -> None:
    from empirio._core.config import parse_redis_url

    with pytest.raises(ValueError, match="share_budget") as info:
        parse_redis_url(url, "share_budget")
    assert "p/w" not in str(info.value)
