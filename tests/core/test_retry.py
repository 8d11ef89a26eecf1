"""Retry policy: a table of waits, and Retry-After parsing."""

from __future__ import annotations

import email.utils

import pytest

from empirio._core.retry import RetryPolicy, is_retryable_status, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("retry", "u", "wait"),
    [
        (0, 0.0, 0.375),  # 0.5 * 0.75
        (0, 0.999999, 0.5),
        (1, 0.0, 0.75),
        (2, 0.5, 2.0 * 0.875),
        (3, 1.0, 4.0),
        (4, 0.0, 6.0),  # capped at 8 * 0.75
        (10, 1.0, 8.0),
    ],
)
def test_backoff_table(retry: int, u: float, wait: float) -> None:
    assert RetryPolicy().backoff(retry, u) == pytest.approx(wait, rel=1e-5)


def test_server_wait_overrides_backoff() -> None:
    policy = RetryPolicy()
    assert policy.delay(5, 1.5, 0.3) == 1.5
    assert policy.delay(1, None, 0.0) == 0.75


def test_gives_up_after_max_retries() -> None:
    policy = RetryPolicy(max_retries=2)
    assert [policy.gives_up(n) for n in range(4)] == [False, False, True, True]
    assert RetryPolicy(max_retries=0).gives_up(0)


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (400, False),
        (401, False),
        (402, False),
        (404, False),
        (408, True),
        (409, True),
        (413, False),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert is_retryable_status(status) is retry


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms is more precise: wins
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "500"}, 500.0),  # as said: too long a wait fails the call (engine)
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    got = parse_retry_after(headers, NOW)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)
