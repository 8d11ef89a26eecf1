"""The scheduling core with a fake clock: ordering, retries, splitting, fatal errors, and a
property: under any sequence of failures every piece is delivered exactly once."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from empirio import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    RateLimitError,
    RequestTooLargeError,
)
from empirio._core.concurrency import Concurrency
from empirio._core.decode import Decoded
from empirio._core.engine import SLOT_POLL_S, Attempt, BatchLimit, Engine
from empirio._core.errors import EmpirioError
from empirio._core.pace import Grant, Limits
from empirio._core.plan import PlannedRequest
from empirio._core.retry import RetryPolicy
from empirio._io.budget import LocalBudget


def req(rid: int, n: int = 10, first: int = 0) -> PlannedRequest:
    pieces = tuple(range(first, first + n))
    return PlannedRequest(rid, 0, pieces, tuple(f"t{i}" for i in pieces), (5,) * n, pieces)


def ok(a: Attempt) -> Decoded:
    n = len(a.request)
    return Decoded(np.zeros((n, 4), np.float32), None, 5 * n)


def engine(
    concurrency: int = 4, batch: int = 10, rpm: float | None = None, retries: int = 5
) -> Engine:
    return Engine(
        budget=LocalBudget(),
        limits=Limits(rpm, None),
        concurrency=Concurrency(concurrency),
        policy=RetryPolicy(max_retries=retries),
        batch_limit=BatchLimit(batch),
        rng=random.Random(0),
    )


def test_sends_in_order_up_to_the_concurrency_limit() -> None:
    e = engine(concurrency=2)
    e.add([req(0), req(1), req(2)])
    step = e.step(0.0)
    assert [a.request.id for a in step.sends] == [0, 1]
    assert e.step(0.0).sends == ()
    e.complete(step.sends[0], ok(step.sends[0]), 0.1)
    assert [a.request.id for a in e.step(0.1).sends] == [2]


def test_a_5xx_is_retried_after_backoff_and_then_succeeds() -> None:
    e = engine()
    e.add([req(0)])
    (a,) = e.step(0.0).sends
    assert e.complete(a, InternalServerError("boom", status_code=503), 1.0).retried
    step = e.step(1.0)
    assert step.sends == ()
    assert step.wake_at is not None
    assert 1.0 + 0.375 <= step.wake_at <= 1.5
    (b,) = e.step(step.wake_at).sends
    assert (b.request, b.retries) == (a.request, 1)
    assert e.complete(b, ok(b), 2.0).decoded is not None
    assert e.idle


def test_retry_after_is_obeyed_and_429_pauses_everything_and_halves_concurrency() -> None:
    e = engine(concurrency=4)
    e.add([req(i) for i in range(6)])
    sends = e.step(0.0).sends
    assert len(sends) == 4
    e.complete(sends[0], RateLimitError("slow", status_code=429, retry_after=7.0), 1.0)
    assert e.concurrency.allowed == 2
    # A first 429 of an unpaced account holds every send for the server's time too.
    assert e.step(1.0).sends == ()  # paused, although a slot is free
    assert e.step(7.9).sends == ()
    e.complete(sends[1], ok(sends[1]), 8.0)
    e.complete(sends[2], ok(sends[2]), 8.0)
    e.complete(sends[3], ok(sends[3]), 8.0)
    after = e.step(8.0).sends
    # The retry goes first, then fresh work; three successes grew the limit from 2 to 3.
    assert [a.request.id for a in after] == [0, 4, 5]
    assert e.concurrency.allowed == 3


@pytest.mark.parametrize("status", [429, 503])
def test_a_server_asking_for_hours_fails_the_call_at_once_with_its_value(status: int) -> None:
    e = engine(concurrency=2)
    e.add([req(0), req(1), req(2)])
    first, second = e.step(0.0).sends
    error_type = RateLimitError if status == 429 else InternalServerError
    refused = error_type("slow down", status_code=status, retry_after=86_400.0)
    done = e.complete(first, refused, 0.5)
    assert not done.retried
    assert e.failed is refused
    assert refused.retry_after == 86_400.0
    assert "86,400 s" in str(refused)
    e.complete(second, ok(second), 0.6)  # what was in flight is still kept
    assert e.idle  # nothing more is sent, nothing waits
    # A wait we give (up to MAX_RETRY_AFTER) is still honoured.
    e2 = engine()
    e2.add([req(0)])
    (a,) = e2.step(0.0).sends
    assert e2.complete(a, error_type("x", status_code=status, retry_after=60.0), 0.1).retried


def test_a_lone_429_of_a_paced_account_holds_senders_for_one_interval_only() -> None:
    e = engine(concurrency=4, rpm=600)  # 10 per second: an interval of about 0.1 s
    e.add([req(i) for i in range(4)])
    (a,) = e.step(0.0).sends
    e.complete(a, RateLimitError("burst", status_code=429, retry_after=1.0), 0.05)
    step = e.step(0.05)
    assert step.sends == ()
    assert step.wake_at is not None
    assert step.wake_at < 0.3  # not the second the Retry-After names
    (b,) = e.step(step.wake_at).sends
    assert b.request.id == 1  # fresh work goes on; the refused request waits its second
    e.complete(b, RateLimitError("again", status_code=429, retry_after=5.0), step.wake_at + 0.01)
    assert e.step(step.wake_at + 1.0).sends == ()  # a second 429 in a row: overload, wait


def test_429s_are_retried_for_the_whole_window_whatever_the_count() -> None:
    e = engine(retries=2)
    e.add([req(0)])
    t, attempts = 0.0, 0
    while e.failed is None and t < 200:
        step = e.step(t)
        if not step.sends:
            assert step.wake_at is not None
            t = step.wake_at
            continue
        (a,) = step.sends
        attempts += 1
        e.complete(a, RateLimitError("storm", status_code=429), t)
    assert isinstance(e.failed, RateLimitError)
    assert attempts > 3  # far more than max_retries allows for other failures
    assert t >= 75.0  # THROTTLE_WINDOW_S


def test_connection_errors_are_retried_until_the_allowance_runs_out() -> None:
    e = engine(retries=2)
    e.add([req(0, 3)])
    t = 0.0
    for _ in range(3):
        step = e.step(t)
        while not step.sends:
            assert step.wake_at is not None
            t = step.wake_at
            step = e.step(t)
        (a,) = step.sends
        e.complete(a, APIConnectionError("reset"), t)
    assert isinstance(e.failed, APIConnectionError)
    assert e.failed.inputs == (0, 1, 2)


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("bad key", status_code=401),
        BadRequestError("Range of input length should be [1, 8192]", status_code=400),
    ],
)
def test_other_errors_are_fatal_at_once(error: EmpirioError) -> None:
    e = engine()
    e.add([req(0), req(1)])
    a, _b = e.step(0.0).sends
    e.complete(a, error, 0.1)
    assert e.failed is error
    assert e.step(0.2).sends == ()
    assert [x.request.id for x in e.abandon()] == [1]
    assert e.idle


def test_a_named_batch_limit_splits_and_is_kept() -> None:
    e = engine(batch=10)
    e.add([req(0, 10), req(1, 10, first=10)])
    a, b = e.step(0.0).sends
    msg = (
        "<400> InternalError.Algo.InvalidParameter: Value error, batch size is invalid, "
        "it should not be larger than 4.: input.contents"
    )
    e.complete(a, BadRequestError(msg, status_code=400), 0.1)
    assert e.failed is None
    assert e.batch_limit.size == 4
    e.complete(b, BadRequestError(msg, status_code=400), 0.1)
    sent = []
    while not e.idle:
        step = e.step(1.0)
        for s in step.sends:
            sent.append(s.request.pieces)
            e.complete(s, ok(s), 1.0)
    assert all(len(p) <= 4 for p in sent)
    assert sorted(i for p in sent for i in p) == list(range(20))


def test_413_halves_the_request() -> None:
    e = engine()
    e.add([req(0, 8)])
    (a,) = e.step(0.0).sends
    e.complete(a, RequestTooLargeError("too big", status_code=413), 0.1)
    sizes = [len(s.request) for s in e.step(0.1).sends]
    assert sizes == [4, 4]


def test_pacing_delays_sends() -> None:
    e = engine(rpm=60)
    e.add([req(0), req(1)])
    step = e.step(0.0)
    assert len(step.sends) == 1
    # One per second, with 20 + 5 ms of jitter margin and 100 ms more while connections open,
    # less the 5 ms a late send may keep.
    assert step.wake_at == pytest.approx(1.12)


OUTCOMES = st.sampled_from(["ok", "ok", "ok", "500", "drop", "429", "limit"])


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 10), min_size=1, max_size=25),
    script=st.lists(OUTCOMES, max_size=200),
    concurrency=st.integers(1, 6),
)
def test_every_piece_is_delivered_exactly_once_whatever_fails(
    sizes: list[int], script: list[str], concurrency: int
) -> None:
    e = engine(concurrency=concurrency, retries=1000)
    first, requests = 0, []
    for rid, n in enumerate(sizes):
        requests.append(req(rid, n, first))
        first += n
    e.add(requests)
    outcomes = iter(script)
    delivered: list[int] = []
    in_flight: list[Attempt] = []
    t = 0.0
    for _ in range(10_000):
        if e.idle:
            break
        step = e.step(t)
        in_flight.extend(step.sends)
        if not in_flight:
            assert step.wake_at is not None
            t = step.wake_at
            continue
        a = in_flight.pop(0)
        kind = next(outcomes, "ok")
        t += 0.01
        outcome: Decoded | EmpirioError
        if kind == "ok":
            outcome = ok(a)
        elif kind == "500":
            outcome = InternalServerError("x", status_code=500)
        elif kind == "drop":
            outcome = APIConnectionError("dropped")
        elif kind == "429":
            outcome = RateLimitError("x", status_code=429, retry_after=0.5)
        elif len(a.request) > 3:
            outcome = BadRequestError(
                "batch size is invalid, it should not be larger than 3", status_code=400
            )
        else:  # a service names its limit only to requests above it
            outcome = InternalServerError("x", status_code=502)
        if e.complete(a, outcome, t).decoded is not None:
            delivered.extend(a.request.pieces)
    assert e.failed is None
    assert e.idle
    assert sorted(delivered) == list(range(first))  # each piece exactly once


def test_a_call_blocked_by_other_calls_polls_for_a_slot() -> None:
    e = engine(concurrency=2)
    e.add([req(2)])
    step = e.step(0.0, busy_elsewhere=2)
    assert step.sends == ()
    assert step.wake_at == pytest.approx(SLOT_POLL_S)  # not None: nothing of its own to wait on
    assert step.for_slot  # so its shell wakes it as a request of another call ends
    sent = e.step(0.01, busy_elsewhere=1)
    assert [a.request.id for a in sent.sends] == [2]
    assert not sent.for_slot


def test_a_call_waiting_for_its_pace_is_not_waiting_for_a_slot() -> None:
    """Only a call held by other calls' slots is woken by their answers; one held by its pace,
    with nothing of its own in flight, waits for its own time (else it would step at every
    answer of every call)."""
    e = engine(rpm=60)
    e.add([req(1), req(2)])
    first = e.step(0.0)
    assert len(first.sends) == 1
    e.complete(first.sends[0], ok(first.sends[0]), 0.1)
    held = e.step(0.1)
    assert held.sends == ()
    assert held.wake_at is not None
    assert held.wake_at > 0.5
    assert not held.for_slot


class StoreBudget(LocalBudget):
    """A budget whose transactions would wait on a store: the engine must not ask it itself."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[float] = []
        self.successes = 0

    def acquire(self, limits: Limits, now: float, tokens: int) -> float:
        self.asked.append(now)
        return super().acquire(limits, now, tokens)

    def succeeded(self) -> None:
        self.successes += 1


def store_engine(rpm: float | None = 600) -> tuple[Engine, StoreBudget]:
    budget = StoreBudget()
    e = Engine(
        budget=budget,
        limits=Limits(rpm, None),
        concurrency=Concurrency(4),
        policy=RetryPolicy(max_retries=3),
        batch_limit=BatchLimit(10),
        rng=random.Random(0),
    )
    return e, budget


def test_a_blocking_budget_is_asked_by_the_caller_one_request_at_a_time() -> None:
    e, budget = store_engine()
    e.add([req(0), req(1), req(2), req(3)])
    step = e.step(0.0)
    assert (step.sends, step.ask) == ((), 50)  # the tokens of the head request
    assert budget.asked == []  # the engine did not ask it
    step = e.answer(0.0, Grant(0.0, 0.0))
    assert [a.request.id for a in step.sends] == [0]  # granted now: handed over at once
    assert step.ask == 50  # and the next one is asked about as soon as it is sent
    step = e.answer(0.01, Grant(0.0, 0.08))  # booked ahead: handed over now, with its slot
    ((booked,),) = [step.sends]
    assert (booked.request.id, booked.slot, booked.sent_at) == (1, 0.08, 0.08)
    assert step.ask == 50
    step = e.answer(0.02, Grant(0.02, None, 0.5))  # nothing bookable before 0.5
    assert (step.sends, step.ask, step.wake_at) == ((), None, pytest.approx(0.5))
    # Until then the budget's answer holds: no transaction for nothing.
    assert e.step(0.25).ask is None
    step = e.step(0.5)
    assert step.ask == 50
    assert [a.request.id for a in e.answer(0.5, Grant(0.5, 0.5)).sends] == [2]


def test_a_send_granted_now_is_not_held_behind_the_next_transaction() -> None:
    """The chain that burst through a Redis far away: each send is handed to the shell as soon
    as its slot is granted, never collected until the budget says no."""
    e, _ = store_engine(rpm=1200)
    e.add([req(k) for k in range(4)])
    step = e.step(0.0)
    handed = []
    t = 0.0
    while step.ask is not None:
        t += 0.08  # a transaction slower than the interval (50 ms)
        step = e.answer(t, Grant(t, t))
        handed.append(len(step.sends))
    assert handed == [1, 1, 1, 1]


def test_a_blocking_budget_is_told_of_outcomes_by_the_caller() -> None:
    e, budget = store_engine()
    e.add([req(0)])
    e.step(0.0)
    (a,) = e.answer(0.0, Grant(0.0, 0.0)).sends
    done = e.complete(a, ok(a), 0.1)
    assert budget.successes == 0
    assert done.budget_note is not None
    done.budget_note()
    assert budget.successes == 1


def test_a_request_asked_about_when_the_call_ends_is_not_abandoned() -> None:
    e, _ = store_engine()
    e.add([req(0), req(1)])
    e.step(0.0)
    (a,) = e.answer(0.0, Grant(0.0, 0.0)).sends
    assert e.abandon() == (a,)  # the one sent, not the one being asked about
    assert e.answer(0.1, Grant(0.1, 0.1)).sends == ()  # the budget's late answer sends nothing
