"""The emulated account's sliding-window limits, driven by a fake clock."""

from __future__ import annotations

from empirio.emulator import AccountLimiter


def test_rpm_admits_up_to_the_limit_then_refuses_until_the_oldest_leaves() -> None:
    lim = AccountLimiter(rpm=3)
    assert [lim.check(t, 1).admitted for t in (0.0, 1.0, 2.0)] == [True, True, True]
    v = lim.check(3.0, 1)
    assert (v.admitted, v.limit, v.retry_after) == (False, "requests", 57.0)
    assert not lim.check(59.9, 1).admitted
    assert lim.check(60.0, 1).admitted  # the request at t=0 has left (t-60, t]


def test_refused_requests_do_not_count() -> None:
    lim = AccountLimiter(rpm=1)
    assert lim.check(0.0, 1).admitted
    for t in range(1, 60):
        assert not lim.check(float(t), 1).admitted
    assert lim.check(60.0, 1).admitted


def test_tpm_counts_tokens_and_says_when_enough_have_left() -> None:
    lim = AccountLimiter(tpm=100)
    assert lim.check(0.0, 60).admitted
    assert lim.check(10.0, 30).admitted
    v = lim.check(20.0, 50)  # 140 > 100: needs the 60 from t=0 to leave, at t=60
    assert (v.admitted, v.limit, v.retry_after) == (False, "tokens", 40.0)
    assert lim.check(60.0, 50).admitted


def test_a_request_larger_than_tpm_is_never_admitted() -> None:
    lim = AccountLimiter(tpm=100)
    v = lim.check(0.0, 101)
    assert not v.admitted
    assert v.limit == "tokens"


def test_strict_burst_allows_rpm_over_60_per_second() -> None:
    lim = AccountLimiter(rpm=120, strict_burst=True)  # 2 per second
    assert lim.check(0.0, 1).admitted
    assert lim.check(0.1, 1).admitted
    v = lim.check(0.2, 1)
    assert (v.admitted, v.limit) == (False, "burst")
    assert abs(v.retry_after - 0.8) < 1e-9
    assert lim.check(1.0, 1).admitted


def test_strict_burst_allows_at_least_one_per_second_under_60_rpm() -> None:
    lim = AccountLimiter(rpm=50, strict_burst=True)
    assert lim.check(0.0, 1).admitted
    assert not lim.check(0.5, 1).admitted
    assert lim.check(1.2, 1).admitted


def test_strict_burst_limits_tokens_per_second_and_admits_a_large_request_alone() -> None:
    lim = AccountLimiter(tpm=6000, strict_burst=True)  # 100 tokens a second
    assert lim.check(0.0, 60).admitted
    refused = lim.check(0.5, 60)
    assert (refused.admitted, refused.limit) == (False, "token burst")
    assert lim.check(1.0, 60).admitted  # the first left the window (0, 1]
    assert not lim.check(1.5, 500).admitted  # too large while others are in the second
    assert lim.check(2.01, 500).admitted  # alone in its second


def test_header_seconds_round_up() -> None:
    assert AccountLimiter.header_seconds(0.01) == 1
    assert AccountLimiter.header_seconds(2.0) == 2
    assert AccountLimiter.header_seconds(2.1) == 3
