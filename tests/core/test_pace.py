"""Pacing to the account's limits and AIMD concurrency, pure, with a fake clock; and the
budget stores that share the pacing state between clients and processes."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from empirio._core.pace import (
    COLD_JITTER_S,
    COLD_S,
    HALF_LIFE_S,
    IDLE_S,
    JITTER_S,
    LATE_S,
    LATENESS_AGE_S,
    MAX_LATE_S,
    BudgetState,
    Lateness,
    Limits,
    admit,
    checked_state,
    reserve,
    reserve_part,
    succeed,
    throttle,
)
from empirio._io.budget import LocalBudget, SqliteBudget, _pack, _unpack, account_id, budget_for
from empirio.emulator import AccountLimiter

#: A state that has been sending (at time 0): no cold start, whose margin the tests below
#: check on its own.
WARM = BudgetState(next_request=0.0)


def send_times(limits: Limits, sizes: list[int], *, senders: int = 1) -> list[float]:
    """When each request goes, through one shared state; ``senders`` take turns asking (as
    several clients or processes of one account would)."""
    state, t, times = BudgetState(), 0.0, []
    clocks = [0.0] * senders
    for k, n in enumerate(sizes):
        who = k % senders
        t = max(t, clocks[who])
        while True:
            wait, state = admit(limits, state, t, n)
            if wait == 0:
                break
            t += wait
        clocks[who] = t
        times.append(t)
    return times


def refusals(
    limits: Limits, sizes: list[int], times: list[float], jitter: float, seed: int = 0
) -> int:
    """429s from the emulator's own limiter (per-minute and per-second rules) when each request
    arrives up to ``jitter`` seconds after it was sent, in arrival order."""
    rng = random.Random(seed)
    arrivals = sorted((t + rng.uniform(0, jitter), n) for t, n in zip(times, sizes, strict=True))
    server = AccountLimiter(
        int(limits.rpm) if limits.rpm else None,
        int(limits.tpm) if limits.tpm else None,
        strict_burst=True,
    )
    return sum(not server.check(a, n).admitted for a, n in arrivals)


def test_unpaced_sends_at_once() -> None:
    limits, state = Limits(None, None), BudgetState()
    for _ in range(100):
        wait, state = admit(limits, state, 0.0, 10_000)
        assert wait == 0.0


@pytest.mark.parametrize(
    ("rpm", "interval"),
    [(50, 60.025 / 50), (60, 1.025), (90, 1.025), (300, 1.025 / 5), (1200, 1.025 / 20)],
)
def test_the_interval_keeps_both_request_rules_with_a_jitter_margin(
    rpm: int, interval: float
) -> None:
    # 90 RPM is 1.5 per second, and a sliding one-second window holds whole requests: one.
    assert Limits(rpm, None).interval(JITTER_S) == pytest.approx(interval, abs=1e-5)


def test_requests_are_spaced_and_idle_time_is_not_banked() -> None:
    limits, state = Limits(60, None), WARM
    wait, state = admit(limits, state, 0.0, 1)
    assert wait == 0.0
    wait, state = admit(limits, state, 0.0, 1)
    assert wait == pytest.approx(1.025, abs=1e-5)
    wait, state = admit(limits, state, 1.027, 1)  # 2 ms late: keeps its slot
    assert wait == 0.0
    assert state.next_request == pytest.approx(2.05, abs=1e-5)
    wait, state = admit(limits, state, 4.0, 1)  # idle: owed nothing but the lateness allowance
    assert wait == 0.0
    wait, state = admit(limits, state, 4.5, 1)
    assert wait == pytest.approx(4.0 - LATE_S + 1.025 - 4.5, abs=1e-5)


def test_a_cold_start_tolerates_more_jitter_for_a_while() -> None:
    limits = Limits(600, None)
    wait, state = admit(limits, BudgetState(), 100.0, 1)  # first send ever: cold
    assert wait == 0.0
    slack = JITTER_S + COLD_JITTER_S + LATE_S
    assert state.next_request == pytest.approx(100.0 - LATE_S + (1 + slack) / 10)
    t, wait = 100.0, 1.0
    while t < 100.0 + COLD_S + 0.5 or wait > 0:
        wait, state = admit(limits, state, t, 1)
        t += wait
    warm = (1 + JITTER_S + LATE_S) / 10
    assert state.next_request - t == pytest.approx(warm, abs=1e-5)
    wait, state = admit(limits, state, t + IDLE_S + 1.0, 1)  # idle past keep-alive: cold again
    assert state.margin(t + IDLE_S + 1.0) == pytest.approx(JITTER_S + COLD_JITTER_S)


def test_tokens_per_second_and_a_large_request_goes_alone() -> None:
    limits, state = Limits(None, 6000), WARM  # 100 tokens a second
    wait, state = admit(limits, state, 0.0, 60)
    assert wait == 0.0
    wait, state = admit(limits, state, 0.1, 60)  # 120 > 100 within 1 + J seconds
    assert wait == pytest.approx(1 + JITTER_S - 0.1, abs=1e-5)
    wait, state = admit(limits, state, 1.1, 500)  # larger than a second's worth: alone
    assert wait == 0.0
    wait, state = admit(limits, state, 1.2, 1)
    assert wait == pytest.approx(1.1 + 1 + JITTER_S - 1.2, abs=1e-5)


def test_tokens_per_minute_hold() -> None:
    limits, state = Limits(None, 600), BudgetState()  # 10 tokens a second, 600 a minute
    t, sent = 0.0, 0
    while t < 61.0:
        wait, state = admit(limits, state, t, 10)
        if wait == 0:
            sent += 10
        t += max(wait, 0.01)
    assert sent <= 600


def test_a_first_429_holds_for_one_interval_a_second_for_the_servers_time() -> None:
    limits = Limits(300, None)
    state = throttle(limits, BudgetState(), 10.0, sent_at=9.9, delay=1.0)
    assert state.paused_until == pytest.approx(10.0 + limits.interval(state.jitter))
    assert state.jitter == pytest.approx(2 * JITTER_S)
    same = throttle(limits, state, 10.05, sent_at=9.95, delay=1.0)  # sent before the cut
    assert same is state
    state = throttle(limits, state, 10.5, sent_at=10.3, delay=4.0)
    assert state.paused_until == pytest.approx(14.5)
    state = succeed(state)
    assert state.strikes == 0


@pytest.mark.parametrize(
    ("seconds_after", "margin"),
    [
        (0.0, 0.02 + 0.06),  # two 429s: 20 ms -> 40 ms -> 80 ms
        (HALF_LIFE_S, 0.02 + 0.03),  # the widening halves every HALF_LIFE_S
        (2 * HALF_LIFE_S, 0.02 + 0.015),
        (10 * HALF_LIFE_S, 0.02),  # back within seconds, successes or not
    ],
)
def test_a_429_widens_the_margin_for_seconds_not_for_the_run(
    seconds_after: float, margin: float
) -> None:
    limits = Limits(1200, None)
    state = throttle(limits, WARM, 10.0, sent_at=9.9, delay=1.0)
    state = throttle(limits, state, 10.0, sent_at=10.0, delay=1.0)
    assert state.margin(10.0 + seconds_after) == pytest.approx(margin, abs=1e-4)
    # A later 429 doubles what is left of it, not what it once was.
    later = throttle(limits, state, 10.0 + 10 * HALF_LIFE_S, sent_at=29.0, delay=1.0)
    assert later.margin(10.0 + 10 * HALF_LIFE_S) == pytest.approx(0.04, abs=1e-3)


@pytest.mark.parametrize(
    ("samples", "late"),
    [
        ([], LATE_S),  # nothing measured: the floor
        ([0.001] * 64, LATE_S),  # on time
        ([0.001] * 60 + [0.04] * 4, 0.04),  # 1 in 16 late by 40 ms: the 95th percentile
        ([0.001] * 62 + [0.04] * 2, LATE_S),  # 1 in 32: below it
        ([0.03] * 64, 0.03),  # a busy CPU: every send 30 ms late
        ([2.0] * 64, MAX_LATE_S),  # stalls are not a margin
    ],
)
def test_lateness_is_the_95th_percentile_of_recent_sends(samples: list[float], late: float) -> None:
    measured = Lateness()
    for k, x in enumerate(samples):
        measured.observe(k * 0.01, x)
    assert measured.late(1.0) == pytest.approx(late)
    # ... and old samples leave: on-time sends bring it back down within LATENESS_AGE_S.
    assert measured.late(1.0 + LATENESS_AGE_S + 0.01) == LATE_S


def test_a_measured_lateness_widens_the_interval_and_keeps_a_late_send_in_its_slot() -> None:
    limits = Limits(1200, None)
    assert limits.interval(JITTER_S, 0.03) == pytest.approx((1 + JITTER_S + 0.03) / 20, abs=1e-5)
    _, state = admit(limits, WARM, 0.0, 1, late=0.03)
    slot = state.next_request
    wait, state = admit(limits, state, slot + 0.025, 1, late=0.03)  # 25 ms late: slot kept
    assert wait == 0.0
    assert state.next_request == pytest.approx(slot + limits.interval(JITTER_S, 0.03), abs=1e-6)


def test_slots_are_booked_ahead_within_the_horizon() -> None:
    limits = Limits(1200, None)
    wait, booked, state = reserve(limits, WARM, 0.0, 1, ahead=0.1)
    assert (wait, booked) == (0.0, True)
    wait, booked, state = reserve(limits, state, 0.0, 1, ahead=0.1)  # the next slot, ~51 ms on
    assert booked
    assert wait == pytest.approx(limits.interval(JITTER_S), abs=1e-5)
    wait, booked, state = reserve(limits, state, 0.0, 1, ahead=0.1)  # past the horizon
    assert not booked
    assert wait == pytest.approx(2 * limits.interval(JITTER_S) - 0.1, abs=1e-5)
    # Booked sends count in the token windows at their own times.
    tokens = Limits(None, 6000)  # 100 a second
    _, _, t_state = reserve(tokens, WARM, 0.0, 80, ahead=0.5)
    wait, booked, _ = reserve(tokens, t_state, 0.0, 80, ahead=0.5)
    assert not booked
    assert wait > 0.5


@pytest.mark.parametrize(
    "state",
    [
        BudgetState(next_request=math.nan),
        BudgetState(paused_until=math.inf),
        BudgetState(jitter=100.0),
        BudgetState(jitter=math.nan),
        BudgetState(jitter=0.0),
        BudgetState(strikes=-1),
        BudgetState(sends=((2.0, 1), (1.0, 1))),
        BudgetState(sends=((math.nan, 1),)),
        BudgetState(sends=((1.0, -5),)),
    ],
)
def test_a_state_the_rules_could_not_have_written_is_refused(state: BudgetState) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        checked_state(state)


def test_every_state_the_rules_write_is_accepted() -> None:
    limits = Limits(1200, 400_000)
    state = BudgetState()
    for k in range(300):
        _, state = admit(limits, state, k * 0.01, 100 + k)
        if k % 50 == 7:
            state = throttle(limits, state, k * 0.01, k * 0.01 - 0.1, 3.0)
        assert checked_state(state) is state


def test_a_state_from_before_a_reboot_is_forgotten() -> None:
    stale = BudgetState(next_request=1e9, sends=((1e9, 5),))
    assert stale.settled(100.0) == BudgetState(jitter=stale.jitter)


@pytest.mark.parametrize("rpm", [50, 300, 1200])
@pytest.mark.parametrize("senders", [1, 3])
def test_no_refusal_in_10_000_jittered_requests(rpm: int, senders: int) -> None:
    limits = Limits(rpm, 2_000_000 * rpm / 50)
    rng = random.Random(rpm)
    sizes = [rng.randint(20, 4_000) for _ in range(10_000)]
    times = send_times(limits, sizes, senders=senders)
    assert refusals(limits, sizes, times, jitter=JITTER_S * 0.99, seed=rpm) == 0
    # ... and close to the bound: J / (1 + J) lost to the margin, nothing else.
    bound = len(sizes) * 60.0 / rpm
    assert times[-1] <= bound * (1 + JITTER_S + LATE_S) * 1.001 + COLD_S * COLD_JITTER_S


def test_exact_spacing_is_refused_under_jitter_which_is_why_we_keep_a_margin() -> None:
    limits = Limits(300, None)
    exact = [k * 0.2 for k in range(2_000)]
    assert refusals(limits, [1] * len(exact), exact, jitter=JITTER_S) > 0


def test_token_bound_traffic_is_never_refused() -> None:
    limits = Limits(1200, 200_000)  # about 3,333 tokens a second
    rng = random.Random(7)
    sizes = [rng.choice([50, 900, 3_000, 9_000]) for _ in range(2_000)]
    times = send_times(limits, sizes, senders=2)
    assert refusals(limits, sizes, times, jitter=JITTER_S * 0.99) == 0


@settings(max_examples=40, deadline=None)
@given(
    rpm=st.integers(5, 2_400),
    tpm=st.integers(2_000, 2_000_000),
    sizes=st.lists(st.integers(1, 30_000), min_size=1, max_size=300),
    seed=st.integers(0, 1000),
)
def test_paced_traffic_is_never_refused(rpm: int, tpm: int, sizes: list[int], seed: int) -> None:
    limits = Limits(rpm, tpm)
    sizes = [min(s, tpm) for s in sizes]
    times = send_times(limits, sizes, senders=2)
    assert refusals(limits, sizes, times, jitter=JITTER_S * 0.99, seed=seed) == 0


@pytest.mark.parametrize(("rpm", "tpm"), [(0, None), (None, -1), (float("inf"), None)])
def test_bad_rates(rpm: float | None, tpm: float | None) -> None:
    with pytest.raises(ValueError, match="positive finite"):
        Limits(rpm, tpm)


def test_state_packs_and_unpacks() -> None:
    state = BudgetState(1.5, 2.5, 0.06, 2, 0.5, ((1.0, 10), (1.25, 2_000_000)), 3.5)
    assert _unpack(_pack(state)) == state


def test_a_file_budget_is_shared_by_every_opener(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    a, b = SqliteBudget(path), SqliteBudget(path)  # as two processes would open it
    limits = Limits(60, None)
    assert a.acquire(limits, 100.0, 1) == 0.0
    cold = 1 + JITTER_S + COLD_JITTER_S + LATE_S
    assert b.acquire(limits, 100.0, 1) == pytest.approx(cold - LATE_S, abs=1e-5)
    b.throttled(limits, 100.5, 100.0, 5.0)
    assert a.acquire(limits, 101.1, 1) > 0  # the pause is seen by the other opener


def test_an_unusable_file_falls_back_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "not-a-db.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    budget = SqliteBudget(bad)
    limits = Limits(60, None)
    assert budget.acquire(limits, 0.0, 1) == 0.0
    assert budget.acquire(limits, 0.0, 1) > 0  # still paces, in memory
    assert "cannot be used" in caplog.text


def test_one_budget_per_account_and_scope(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPIRIOLABS_BUDGET_DIR", str(tmp_path))
    url = "https://example.invalid/v1"
    assert budget_for("process", url, "k1") is budget_for("process", url + "/", "k1")
    assert budget_for("process", url, "k1") is not budget_for("process", url, "k2")
    assert budget_for("client", url, "k1") is not budget_for("client", url, "k1")
    machine = budget_for("machine", url, "secret-key-123")
    assert isinstance(machine, SqliteBudget)
    assert "secret-key-123" not in str(machine.path)
    assert machine.path.name.startswith(account_id(url, "secret-key-123"))
    assert isinstance(budget_for("process", url, "k1"), LocalBudget)


def test_a_store_with_its_own_clock_decides_as_the_local_ledger() -> None:
    """One home for the rules, several stores: a store whose clock is far from the caller's
    (Redis's TIME against a host's monotonic clock) makes the same decisions, in durations."""
    from empirio._io.budget import LocalBudget, _Kept

    class OtherClock(_Kept):
        def __init__(self, offset: float) -> None:
            super().__init__()
            self.offset = offset
            self.state = BudgetState()

        def _transact(self, now: float | None, fn: Any) -> Any:
            assert now is not None
            out, self.state = fn(self.state, now + self.offset)
            return out, now

    def admitted_at(budget: Any) -> list[float]:
        now, times = 50.0, []
        for step in range(300):
            tokens = 100 + (step * 37) % 900
            while (wait := budget.acquire(limits, now, tokens)) > 0:
                now += wait
            times.append(now)
            if step == 120:
                budget.throttled(limits, now, now - 0.2, 2.0)
        return times

    limits = Limits(1200, 400_000)
    local = admitted_at(LocalBudget())
    assert admitted_at(OtherClock(1.7e9)) == pytest.approx(local, abs=1e-4)
    assert local[-1] - local[0] > 10  # paced: 300 requests at 20 a second, and a pause


def test_a_seconds_remainder_carries_the_head_of_the_next_request() -> None:
    limits = Limits(1200, 6000)  # 100 tokens a second
    _, state = admit(limits, WARM, 0.0, 70)
    _, booked, _ = reserve(limits, state, 0.1, 60)  # 70 + 60 > 100: the whole must wait
    assert not booked
    wait, k, new = reserve_part(limits, state, 0.1, (20, 10, 30))
    assert (wait, k) == (0.0, 2)  # 20 + 10 fill the second's remaining 30
    assert new.sends[-1] == (0.1, 30)
    wait, k, _ = reserve_part(limits, state, 0.1, (40, 10))  # not even the first fits...
    assert k == 0
    assert wait == pytest.approx(1 + JITTER_S - 0.1, abs=1e-5)  # ... until the 70 have left
    assert reserve_part(limits, state, 0.1, (20,))[:2] == (math.inf, 0)  # nothing to cut
    assert reserve_part(Limits(1200, None), state, 0.1, (20, 10))[:2] == (math.inf, 0)


@pytest.mark.parametrize("rpm", [300, 1200])
def test_long_texts_use_each_seconds_token_budget(rpm: int) -> None:
    """~3,000-token texts at 2M tokens a minute: requests of ten (30,000) leave a tenth of each
    second unused; the remainder carries the head of the next request. Nothing is refused."""
    limits = Limits(rpm, 2_000_000)
    rng = random.Random(rpm)
    queue = [[rng.randint(2_600, 3_200) for _ in range(10)] for _ in range(60)]
    state, t, sent_at, sizes = WARM, 0.0, [], []
    while queue:
        pieces = queue.pop(0)
        wait, booked, new = reserve(limits, state, t, sum(pieces))
        k = 0
        if not booked:
            head, k, part = reserve_part(limits, state, t, pieces)
            if k:
                queue.insert(0, pieces[k:])
                pieces, wait, new = pieces[:k], head, part
            else:
                wait = min(wait, head)
        if not booked and not k:
            queue.insert(0, pieces)
            t += wait
            state = new
            continue
        state = new
        sent_at.append(t + wait)
        sizes.append(sum(pieces))
    total = sum(sizes)
    assert refusals(limits, sizes, sent_at, jitter=JITTER_S * 0.99) == 0
    bound = total / (2_000_000 / 60)
    assert bound / sent_at[-1] >= 0.92  # requests of ten alone: 0.87


@pytest.mark.parametrize(
    "blob",
    [_pack(BudgetState(next_request=math.nan)), _pack(BudgetState(jitter=100.0)), b"\x07" * 61],
    ids=["nan", "huge-margin", "garbage"],
)
def test_a_tampered_machine_ledger_is_replaced_with_one_warning(
    tmp_path: Path, blob: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    path = tmp_path / "b.sqlite3"
    SqliteBudget(path).acquire(Limits(60, None), 0.0, 1)  # made by a first process
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE budget SET state = ? WHERE id = 0", (blob,))
    budget, limits = SqliteBudget(path), Limits(60, None)
    assert budget.acquire(limits, 100.0, 1) == 0.0
    assert budget.acquire(limits, 100.0, 1) > 0.5  # paced again, not off for good
    assert budget.acquire(limits, 100.0, 1) < 2.0  # nor held for hours
    warned = [r for r in caplog.records if "not valid" in r.getMessage()]
    assert len(warned) == 1
    assert str(path) in warned[0].getMessage()


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(min_size=48, max_size=112))
def test_no_stored_value_stalls_or_unpaces_the_account(blob: bytes) -> None:
    """Whatever a shared store holds, a decision is either the rules' own or a fresh start:
    never a NaN that turns pacing off, never a wait of hours."""
    import struct

    try:
        state = checked_state(_unpack(blob))
    except (ValueError, struct.error):
        state = BudgetState()
    limits = Limits(600, 2_000_000)
    wait, after = admit(limits, state, 1000.0, 100)
    assert 0.0 <= wait <= 2 * 61 + 120  # at most what settled() still believes
    if wait == 0.0:
        wait, _ = admit(limits, after, 1000.0, 100)
        assert wait > 0  # paced: the next request waits


def test_strikes_left_by_a_process_that_ended_lapse_after_a_minute() -> None:
    limits = Limits(300, None)
    state = throttle(limits, WARM, 10.0, sent_at=9.9, delay=30.0)  # its process then ended
    later = throttle(limits, state, 10.0 + 61.0, sent_at=70.9, delay=30.0)
    assert later.strikes == 1  # a first 429 again: one interval, not the server's 30 s
    assert later.paused_until < 71.0 + 1.0
