"""The per-call driver with a fake clock and no sockets: results in input order whatever the
order of completion, progress, usage, cache pairs, partial results on failure, abandonment."""

from __future__ import annotations

import random

import numpy as np
import pytest

from empirio import AuthenticationError, InvalidInputError
from empirio._core.concurrency import Concurrency
from empirio._core.decode import Decoded
from empirio._core.driver import Call, CallDriver, known_result
from empirio._core.engine import Attempt, BatchLimit, Engine
from empirio._core.pace import Limits
from empirio._core.plan import Known, SegmentPlan, plan_segment, unique_texts
from empirio._core.result import UsageMeter
from empirio._core.retry import RetryPolicy
from empirio._core.tokens import get_tokenizer
from empirio._io.budget import LocalBudget

DIMS = 4
DENSE = Call("document", "dense")


def plan(texts: list[str], index: int = 0, offset: int = 0, **kw: object) -> SegmentPlan:
    return plan_segment(
        texts,
        tokenizer=get_tokenizer(),
        index=index,
        offset=offset,
        first_request_id=index << 24,
        **kw,  # type: ignore[arg-type]
    )


def driver(plans: list[SegmentPlan], *, ahead: int = 1, cache: bool = False) -> CallDriver:
    engine = Engine(
        budget=LocalBudget(),
        limits=Limits(None, None),
        concurrency=Concurrency(8),
        policy=RetryPolicy(max_retries=0),
        batch_limit=BatchLimit(10),
        rng=random.Random(0),
    )
    return CallDriver(
        DENSE, DIMS, iter(plans), engine, UsageMeter(), ahead=ahead, keep_cache_pairs=cache
    )


def answer(a: Attempt) -> Decoded:
    """Row i of a request is [first text's number + i, 0, 0, 0], so order can be checked."""
    rows = np.zeros((len(a.request), DIMS), np.float32)
    rows[:, 0] = [int(t.removeprefix("text ")) for t in a.request.texts]
    return Decoded(rows, None, 3 * len(a.request))


def drive(d: CallDriver, seed: int) -> tuple[list[np.ndarray], int]:
    """Drive ``d`` to its end, completing in shuffled order; its dense parts, texts finished."""
    rng = random.Random(seed)
    out: list[np.ndarray] = []
    now, finished = 0.0, 0
    pending: list[Attempt] = []
    while True:
        out.extend(r.dense for r in d.ready() if r.dense is not None)
        step = d.step(now, 0, 0.05)
        if step is None:
            return out, finished
        pending.extend(step.sends)
        rng.shuffle(pending)
        if pending:
            attempt = pending.pop()
            finished += d.complete(attempt, answer(attempt), now)
        now += 0.01


@pytest.mark.parametrize("seed", range(5))
def test_results_come_out_in_input_order_whatever_the_completion_order(seed: int) -> None:
    texts = [f"text {i}" for i in range(45)]
    d = driver([plan(texts[:25]), plan(texts[25:], index=1, offset=25)], ahead=2)
    parts, finished = drive(d, seed)
    assert [len(p) for p in parts] == [25, 20]
    assert np.concatenate(parts)[:, 0].tolist() == list(range(45))
    assert finished == 45
    assert d.meter.usage.requests == 5
    assert d.meter.usage.input_tokens == 3 * 45


def test_repeats_are_sent_once_and_counted_for_each_caller_text() -> None:
    texts = ["text 1", "text 2", "text 1", "text 1"]
    d = driver([plan(texts)])
    parts, finished = drive(d, 0)
    assert parts[0][:, 0].tolist() == [1, 2, 1, 1]
    assert finished == 4
    assert d.meter.usage.requests == 1
    assert d.meter.usage.input_tokens == 6


def test_cache_pairs_are_the_finished_texts_once() -> None:
    texts = [f"text {i}" for i in range(12)]
    keys = {"dense": tuple(f"k{i}" for i in range(12))}
    d = driver([plan(texts, cache_keys=keys)], cache=True)
    drive(d, 1)
    pairs = d.take_cache_pairs()
    assert sorted(k for k, _ in pairs) == sorted(keys["dense"])
    assert all(len(v) == 4 * DIMS for _, v in pairs)
    assert d.take_cache_pairs() == []


def test_a_failure_carries_every_finished_text_as_partial() -> None:
    texts = [f"text {i}" for i in range(30)]
    d = driver([plan(texts)])
    step = d.step(0.0, 0, 0.05)
    assert step is not None
    assert len(step.sends) == 3
    first, second, third = step.sends
    d.complete(first, answer(first), 0.1)
    d.complete(third, answer(third), 0.1)
    d.complete(second, AuthenticationError("bad key", status_code=401), 0.1)
    with pytest.raises(AuthenticationError) as caught:
        d.step(0.2, 0, 0.05)
    exc = caught.value
    assert exc.partial is not None
    assert exc.partial.dense is not None
    assert exc.partial_indices == tuple(range(10)) + tuple(range(20, 30))
    assert exc.partial.dense[:, 0].tolist() == list(range(10)) + list(range(20, 30))


def test_bad_input_in_a_later_segment_stops_the_call_after_the_earlier_ones() -> None:
    def plans() -> object:
        yield plan([f"text {i}" for i in range(10)])
        raise InvalidInputError("text 11 is blank", (11,))

    d = CallDriver(DENSE, DIMS, plans(), driver([]).engine, UsageMeter(), ahead=2)  # type: ignore[arg-type]
    step = d.step(0.0, 0, 0.05)
    assert step is not None
    assert len(step.sends) == 1
    d.complete(step.sends[0], answer(step.sends[0]), 0.1)
    assert [len(r) for r in d.ready()] == [10]  # the good segment is handed out
    with pytest.raises(InvalidInputError, match="text 11"):
        d.step(0.2, 0, 0.05)


def test_closing_with_requests_in_flight_counts_them_as_abandoned() -> None:
    d = driver([plan([f"text {i}" for i in range(20)])])
    step = d.step(0.0, 0, 0.05)
    assert step is not None
    assert len(step.sends) == 2
    gone = d.close()
    assert len(gone) == 2
    assert d.meter.usage.abandoned_requests == 2
    assert d.meter.usage.abandoned_tokens == sum(a.request.tokens for a in gone)
    assert d.close() == ()  # once


def test_a_segment_of_known_texts_needs_no_request() -> None:
    texts = ["text 1", "text 2"]
    uniq = unique_texts(texts)
    known = Known((0, 1), np.ones((2, DIMS), np.float32), None)
    p = plan_segment(uniq, tokenizer=get_tokenizer, known=known)
    assert not p.pieces
    result = known_result(p, DENSE, DIMS)
    assert result.dense is not None
    assert result.dense.shape == (2, DIMS)
    assert result.usage.requests == 0
    with pytest.raises(ValueError, match="texts to send"):
        known_result(plan(texts), DENSE, DIMS)


def test_a_segment_served_from_the_cache_hands_out_the_caches_rows_without_copies() -> None:
    """A segment found whole in the cache keeps the cache's array and hands it out as it is
    (the call's one result array is the only copy); one with a repeat is gathered."""
    rows = np.arange(3 * DIMS, dtype=np.float32).reshape(3, DIMS)
    found = plan_segment(
        unique_texts(["a", "b", "c"]), tokenizer=get_tokenizer, known=Known((0, 1, 2), rows, None)
    )
    d = driver([found])
    assert d.step(0.0, 0, 0.05) is not None
    (part,) = d.ready()
    assert part.dense is rows  # no zeros filled, no copy in, no gather out
    repeated = Known((0, 1), rows[:2], None)
    again = plan_segment(unique_texts(["a", "b", "a"]), tokenizer=get_tokenizer, known=repeated)
    d = driver([again])
    assert d.step(0.0, 0, 0.05) is not None
    (part,) = d.ready()
    assert part.dense is not None
    np.testing.assert_array_equal(part.dense, rows[[0, 1, 0]])


def test_call_says_which_views_it_asks_for() -> None:
    assert (Call("query", "dense").dense, Call("query", "dense").sparse) == (True, False)
    assert (Call("query", "sparse").dense, Call("query", "sparse").sparse) == (False, True)
    assert (Call("query", "both").dense, Call("query", "both").sparse) == (True, True)
