"""Client-side pacing and AIMD concurrency, with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from empirio._pace import Concurrency, Pacer
from empirio.emulator import AccountLimiter


def test_unpaced_sends_at_once() -> None:
    p = Pacer(None, None)
    assert [p.acquire(0.0, 10_000) for _ in range(100)] == [0.0] * 100


def test_requests_are_spaced_evenly() -> None:
    p = Pacer(rpm=60, tpm=None)
    assert p.acquire(0.0, 1) == 0.0
    assert p.acquire(0.0, 1) == pytest.approx(1.0)
    assert p.acquire(0.5, 1) == pytest.approx(0.5)
    assert p.acquire(1.0, 1) == 0.0
    assert p.acquire(5.0, 1) == 0.0  # idle time is not banked as a burst
    assert p.acquire(5.5, 1) == pytest.approx(0.5)


def test_tokens_flow_with_one_second_of_burst() -> None:
    p = Pacer(rpm=None, tpm=6000)  # 100 tokens a second
    assert p.acquire(0.0, 100) == 0.0  # one second's worth at once
    assert p.acquire(0.0, 100) == pytest.approx(0.0)  # tat=1.0, burst of 1 s allows it
    assert p.acquire(0.0, 100) == pytest.approx(1.0)  # tat=2.0: wait until 1.0
    assert p.acquire(1.0, 100) == 0.0


def test_window_guard_never_exceeds_rpm_in_any_window() -> None:
    p = Pacer(rpm=3, tpm=None, window=10.0)
    times = []
    t = 0.0
    for _ in range(9):
        wait = p.acquire(t, 1)
        while wait > 0:
            t += wait
            wait = p.acquire(t, 1)
        times.append(t)
    for i in range(len(times) - 3):
        assert times[i + 3] - times[i] >= 10.0 - 1e-9


def test_pause_holds_every_send() -> None:
    p = Pacer(None, None)
    p.pause_until(5.0)
    assert p.acquire(1.0, 1) == pytest.approx(4.0)
    assert p.acquire(5.0, 1) == 0.0


def test_fits() -> None:
    assert Pacer(None, 100).fits(100)
    assert not Pacer(None, 100).fits(101)
    assert Pacer(None, None).fits(10**9)


@pytest.mark.parametrize(("rpm", "tpm"), [(0, None), (None, -1)])
def test_bad_rates(rpm: float | None, tpm: float | None) -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(rpm, tpm)


def simulate(rpm: int, tpm: int, sizes: list[int], jitter: float = 0.0) -> tuple[float, int]:
    """Send requests of ``sizes`` tokens through the pacer to a sliding-window server
    (the emulator's own limiter, 60 s window), one at a time with a fake clock; arrival is
    delayed by up to ``jitter`` seconds. Returns (finish time, 429s)."""
    pacer, server = Pacer(rpm, tpm), AccountLimiter(rpm, tpm)
    t, refused = 0.0, 0
    for k, n in enumerate(sizes):
        while (wait := pacer.acquire(t, n)) > 0:
            t += wait
        arrival = t + jitter * ((k * 7919) % 13) / 12
        if not server.check(arrival, n).admitted:
            refused += 1
    return t, refused


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.integers(5, 600),
    tpm=st.integers(2_000, 200_000),
    sizes=st.lists(st.integers(1, 2_000), min_size=1, max_size=400),
)
def test_paced_traffic_is_never_refused_by_a_sliding_window_server(
    rpm: int, tpm: int, sizes: list[int]
) -> None:
    sizes = [min(s, tpm) for s in sizes]
    _, refused = simulate(rpm, tpm, sizes, jitter=0.9)
    assert refused == 0


@pytest.mark.parametrize(
    ("rpm", "tpm", "size"), [(50, 2_000_000, 800), (50, 2_000_000, 8_000), (600, 100_000, 400)]
)
def test_paced_throughput_is_close_to_the_bound(rpm: int, tpm: int, size: int) -> None:
    n = 20 * rpm
    finish, refused = simulate(rpm, tpm, [size] * n)
    bound_minutes = n / min(rpm, tpm / size)
    assert refused == 0
    # The 1 s of guard slack per 60 s window costs about 2 %, smoothing about one interval.
    assert finish / 60.0 <= bound_minutes * 1.03


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
