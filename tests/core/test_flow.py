"""One call's decisions as a generator, driven by hand with no I/O: what it asks the shell to
do, and what it makes of the answers (merging, spreading repeats, partial results, fallback)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from empirio import AuthenticationError, InvalidInputError, UnsupportedFeatureError
from empirio._core.driver import Call
from empirio._core.flow import (
    CallOptions,
    Drive,
    Driven,
    Fetch,
    Gathered,
    PlanAll,
    concatenate,
    embed_flow,
    prepend_partial,
)
from empirio._core.result import EmbeddingResult, Usage

DIMS = 3


class Context:
    """A client as the flow sees it: settings, and shared views held in a dict."""

    dimensions = DIMS

    def __init__(self, *, pipelines: bool = False, parked: dict[str, Any] | None = None) -> None:
        self._pipelines = pipelines
        self.parked = parked
        self.parked_other: list[tuple[Call, list[str]]] = []

    def check_call(self, kind: str, output: str) -> Call:
        if output not in ("dense", "sparse", "both"):
            raise InvalidInputError(f"output must be ...; got {output!r}")
        return Call(kind, output)  # type: ignore[arg-type]

    def pipelines(self, texts: Sequence[str]) -> bool:
        return self._pipelines

    def take_parked(self, texts: list[str], call: Call) -> tuple[list[Any], list[str]] | None:
        if self.parked is None or call.output == "both":
            return None
        values = [self.parked.get(t) for t in texts]
        return values, list(
            dict.fromkeys(t for t, v in zip(texts, values, strict=True) if v is None)
        )

    def park_other(self, call: Call, missing: list[str], fetched: EmbeddingResult) -> None:
        self.parked_other.append((call, missing))


def rows(values: Sequence[float], offset: int = 0) -> EmbeddingResult:
    dense = np.zeros((len(values), DIMS), np.float32)
    dense[:, 0] = values
    return EmbeddingResult(dense, None, Usage(requests=1), offset)


def test_a_small_call_plans_then_drives_and_returns_the_part() -> None:
    flow = embed_flow(Context(), ["a", "b"], CallOptions())
    step = next(flow)
    assert isinstance(step, PlanAll)
    assert step.texts == ["a", "b"]
    plan = type("Plan", (), {"pieces": (1,)})()
    step = flow.send(plan)
    assert isinstance(step, Drive)
    assert step.plan is plan
    assert step.total == 2
    with pytest.raises(StopIteration) as stop:
        flow.send(Driven(Gathered.of([rows([1, 2])])))
    assert stop.value.value.dense[:, 0].tolist() == [1, 2]


def test_as_lists_returns_python_floats() -> None:
    flow = embed_flow(Context(), ["a"], CallOptions(as_lists=True))
    next(flow)
    flow.send(type("Plan", (), {"pieces": (1,)})())
    with pytest.raises(StopIteration) as stop:
        flow.send(Driven(Gathered.of([rows([7])])))
    assert stop.value.value == [[7.0, 0.0, 0.0]]


def test_bad_input_fails_before_any_step() -> None:
    with pytest.raises(InvalidInputError, match="output"):
        next(embed_flow(Context(), ["a"], CallOptions(output="nope")))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="empty or whitespace"):
        next(embed_flow(Context(), ["a", " "], CallOptions()))


def test_no_texts_need_no_step() -> None:
    with pytest.raises(StopIteration) as stop:
        next(embed_flow(Context(), [], CallOptions()))
    assert stop.value.value.dense.shape == (0, DIMS)


def test_a_pipelined_call_sends_each_text_once_and_spreads_the_repeats() -> None:
    flow = embed_flow(Context(pipelines=True), ["a", "b", "a", "c"], CallOptions())
    step = next(flow)
    assert isinstance(step, Drive)
    assert step.plan is None
    assert list(step.texts) == ["a", "b", "c"]
    assert step.done == 1
    assert step.total == 4
    assert step.positions == (0, 1, 3)
    with pytest.raises(StopIteration) as stop:
        flow.send(Driven(Gathered.of([rows([1, 2]), rows([3], offset=2)])))
    assert stop.value.value.dense[:, 0].tolist() == [1, 2, 1, 3]


def test_a_pipelined_failure_keeps_the_parts_handed_out_as_partial() -> None:
    flow = embed_flow(Context(pipelines=True), ["a", "b", "a", "c"], CallOptions())
    next(flow)
    error = AuthenticationError("bad key", status_code=401, inputs=(2,))
    with pytest.raises(AuthenticationError) as caught:
        flow.send(Driven(Gathered.of([rows([1, 2])]), None, error))
    exc = caught.value
    assert exc.inputs == (3,)  # the distinct text 2 ("c") is the caller's text 3
    assert exc.partial is not None
    assert exc.partial_indices == (0, 1, 2)
    assert exc.partial.dense is not None
    assert exc.partial.dense[:, 0].tolist() == [1, 2, 1]


def test_shared_views_fetch_only_what_is_not_parked_and_report_the_rest() -> None:
    done: list[int] = []
    ctx = Context(parked={"a": np.full(DIMS, 9, np.float32)})
    flow = embed_flow(ctx, ["a", "b", "a"], CallOptions(on_progress=done.append))
    step = next(flow)
    assert isinstance(step, Fetch)
    assert step.texts == ["b"]
    assert step.options.output == "both"
    fetched = EmbeddingResult(np.full((1, DIMS), 5, np.float32), [{1: 0.5}], Usage(requests=1))
    with pytest.raises(StopIteration) as stop:
        flow.send(fetched)
    assert stop.value.value.dense[:, 0].tolist() == [9, 5, 9]
    assert ctx.parked_other == [(Call("document", "dense"), ["b"])]
    assert done == [2]  # the fetch reports "b"; the two parked ones are reported here


def test_an_endpoint_without_sparse_falls_back_to_dense_for_dense_calls_only() -> None:
    flow = embed_flow(Context(parked={}), ["a"], CallOptions())
    assert isinstance(next(flow), Fetch)
    step = flow.throw(UnsupportedFeatureError("no sparse"))
    assert isinstance(step, Fetch)
    assert step.options.output == "dense"
    assert step.texts == ["a"]
    flow = embed_flow(Context(parked={}), ["a"], CallOptions(output="sparse"))
    next(flow)
    with pytest.raises(UnsupportedFeatureError):
        flow.throw(UnsupportedFeatureError("no sparse"))


def test_concatenate_and_prepend_partial() -> None:
    whole = concatenate([rows([1]), rows([2, 3], offset=1)])
    assert whole.dense is not None
    assert whole.dense[:, 0].tolist() == [1, 2, 3]
    assert whole.usage.requests == 2
    exc = AuthenticationError("x", status_code=401)
    exc.partial, exc.partial_indices = rows([9], offset=5), (5,)
    prepend_partial(exc, Gathered.of([rows([1, 2])]))
    assert exc.partial_indices == (0, 1, 5)
    assert exc.partial is not None
    assert exc.partial.dense is not None
    assert exc.partial.dense[:, 0].tolist() == [1, 2, 9]


def test_parts_are_gathered_into_one_array_and_not_kept() -> None:
    """Each part's rows are copied into one array of the call's size as it comes: the part
    can be dropped at once, and the result is that array, not a join made at the end."""
    import gc
    import weakref

    gathered = Gathered(3)
    first = rows([1, 2])
    assert first.dense is not None
    ref = weakref.ref(first.dense)
    gathered.add(first)
    del first
    gc.collect()
    assert ref() is None  # nothing of the part is held
    gathered.add(rows([3], offset=2))
    whole = gathered.result()
    assert whole.dense is not None
    assert whole.dense.base is None  # the array itself: no view, no copy
    assert whole.dense[:, 0].tolist() == [1, 2, 3]
    assert whole.usage.requests == 2
    with pytest.raises(ValueError, match="a part at 5 where 3 was next"):
        gathered.add(rows([4], offset=5))
