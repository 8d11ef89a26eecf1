"""Small concurrent calls merged, pure: who may join, and how one answer or failure is shared."""

from __future__ import annotations

import numpy as np
import pytest

from empirio._core.coalesce import (
    MAX_HOLD_S,
    WINDOW_S,
    Place,
    hold_for,
    joinable,
    key,
    share,
    share_error,
)
from empirio._core.errors import APIStatusError, InvalidInputError
from empirio._core.result import EmbeddingResult, Usage


def merged(n: int) -> EmbeddingResult:
    dense = np.eye(n, 8, dtype=np.float32)
    return EmbeddingResult(dense, [{i: 1.0} for i in range(n)], Usage(requests=1, input_tokens=9))


PLACES = [Place(0, 1), Place(1, 3), Place(4, 1)]


@pytest.mark.parametrize(
    ("n", "progress", "as_lists", "joins"),
    [
        (1, False, False, True),
        (9, False, False, True),
        (10, False, False, False),
        (0, False, False, False),
        (1, True, False, False),
        (1, False, True, False),
    ],
)
def test_who_may_join(n: int, progress: bool, as_lists: bool, joins: bool) -> None:
    assert joinable(n, 10, progress=progress, as_lists=as_lists) is joins


def test_queries_and_documents_never_share_a_request() -> None:
    assert key("query", "dense") != key("document", "dense")
    assert key("query", "dense") != key("query", "sparse")


@pytest.mark.parametrize(("slot_in", "held"), [(0.0, WINDOW_S), (0.2, 0.2), (30.0, MAX_HOLD_S)])
def test_a_merged_call_is_held_no_longer_than_the_account_would_hold_it(
    slot_in: float, held: float
) -> None:
    assert hold_for(slot_in) == pytest.approx(held)


def test_each_caller_gets_its_own_rows_and_usage_is_reported_once() -> None:
    result = merged(5)
    first, second, third = share(result, PLACES)
    assert first.dense is not None
    assert second.dense is not None
    assert third.dense is not None
    assert np.array_equal(second.dense, result.dense[1:4])  # type: ignore[index]
    assert second.sparse == [{1: 1.0}, {2: 1.0}, {3: 1.0}]
    assert np.array_equal(third.dense, result.dense[4:5])  # type: ignore[index]
    assert first.usage == result.usage
    assert second.usage == third.usage == Usage()


def test_a_failure_is_shared_per_caller_with_its_own_partial_result() -> None:
    error = APIStatusError("boom", status_code=500, inputs=(2, 4))
    error.partial = merged(5)
    error.partial_indices = (0, 1, 3)  # texts 2 and 4 were not finished
    first, second, third = share_error(error, PLACES)
    assert isinstance(first, EmbeddingResult)  # all of its texts finished: no error for it
    assert isinstance(second, APIStatusError)
    assert isinstance(third, APIStatusError)
    assert second is not error
    assert third is not error
    assert second.partial_indices == (0, 2)  # its own positions
    assert second.partial is not None
    assert len(second.partial) == 2
    assert second.inputs == (1,)
    assert third.partial is None
    assert third.partial_indices == ()
    assert third.inputs == (0,)
    assert error.partial_indices == (0, 1, 3)  # the original is untouched


def test_an_input_refused_before_anything_was_sent_runs_each_caller_alone() -> None:
    assert share_error(InvalidInputError("too long", (1,)), PLACES) == [None, None, None]
