"""Planning: validation, dedup, instructions, over-length policy, packing, reassembly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from empirio import InvalidInputError, format_query
from empirio._core.decode import Decoded
from empirio._core.driver import Call, _Segment
from empirio._core.plan import SegmentPlan, check_texts, pack, plan_segment
from empirio._core.tokens import get_tokenizer

tok = get_tokenizer()


def test_check_texts_names_blank_positions() -> None:
    with pytest.raises(InvalidInputError, match=r"positions \[1, 3\]") as info:
        check_texts(["ok", "", "fine", "  \n"])
    assert info.value.indices == (1, 3)
    assert isinstance(info.value, ValueError)


def test_check_texts_names_non_strings_with_offset() -> None:
    with pytest.raises(InvalidInputError, match=r"NoneType, int.*positions \[11, 12\]"):
        check_texts(["a", None, 5], offset=10)  # type: ignore[list-item]


def test_a_single_string_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="not a single string"):
        check_texts("hello")


@given(
    tokens=st.lists(st.integers(1, 9000), max_size=300),
    batch=st.integers(1, 64),
    budget=st.one_of(st.none(), st.integers(1, 50_000)),
)
def test_pack_keeps_order_covers_all_and_respects_limits(
    tokens: list[int], batch: int, budget: int | None
) -> None:
    runs = pack(tokens, batch, budget)
    assert [i for run in runs for i in run] == list(range(len(tokens)))
    for run in runs:
        assert 1 <= len(run) <= batch
        if budget is not None and len(run) > 1:
            assert sum(tokens[i] for i in run) <= budget


def test_identical_texts_are_planned_once() -> None:
    plan = plan_segment(["a b", "c d", "a b", "a b"], tokenizer=tok)
    assert [p.text for p in plan.pieces] == ["a b", "c d"]
    assert plan.inverse.tolist() == [0, 1, 0, 0]
    assert plan.requests[0].inputs == (0, 1, 2, 3)


def test_queries_get_the_prompt_documents_never() -> None:
    q = plan_segment(["where?"], tokenizer=tok, kind="query", instruction="Find it")
    assert q.pieces[0].text == format_query("where?", "Find it")
    d = plan_segment(["where?"], tokenizer=tok, kind="document", instruction="Find it")
    assert d.pieces[0].text == "where?"
    api = plan_segment(
        ["where?"], tokenizer=tok, kind="query", instruction_mode="api", instruction="Find it"
    )
    assert api.pieces[0].text == "where?"
    # ...but its billed tokens include the prompt the service will add.
    assert api.requests[0].tokens == tok.billed(format_query("where?", "Find it"))


LONG = " ".join(f"w{i}" for i in range(4000))  # about 18,000 tokens: digits are single tokens


def test_overflow_error_names_positions_and_counts() -> None:
    with pytest.raises(InvalidInputError, match=r"limit of 8191 tokens.*positions? 12 \(") as info:
        plan_segment(["short", "also short", LONG], tokenizer=tok, overflow="error", offset=10)
    assert info.value.indices == (12,)


def test_overflow_truncate_cuts_to_the_limit() -> None:
    plan = plan_segment(["short", LONG], tokenizer=tok, overflow="truncate")
    assert plan.truncated == ((1, tok.count(LONG)),)
    assert plan.pieces[1].tokens <= 8191
    assert LONG.startswith(plan.pieces[1].text)


def test_overflow_chunk_makes_windows_of_one_owner() -> None:
    plan = plan_segment(["short", LONG], tokenizer=tok, overflow="chunk")
    owners = [p.owner for p in plan.pieces]
    assert owners == [0] + [1] * (len(owners) - 1)
    assert len(owners) - 1 == -(-tok.count(LONG) // 8191)
    assert all(p.tokens <= 8191 for p in plan.pieces)
    assert "".join(p.text for p in plan.pieces[1:]) == LONG


def test_requests_respect_batch_size_and_token_budget() -> None:
    texts = [f"text number {i} " * 50 for i in range(25)]
    plan = plan_segment(texts, tokenizer=tok, batch_size=4, token_budget=1000)
    for r in plan.requests:
        assert len(r) <= 4
        assert r.tokens <= 1000
    assert sum(len(r) for r in plan.requests) == 25


def assemble(
    plan: SegmentPlan, dense: np.ndarray, sparse: list[dict[int, float]]
) -> tuple[np.ndarray | None, list[dict[int, float]] | None]:
    """Feed each request's rows to the driver's per-segment buffers, last request first (so
    windows arrive out of order), and read the segment back."""
    seg = _Segment(plan, Call("document", "both"), dense.shape[1])
    for request in reversed(plan.requests):
        rows = list(request.pieces)
        seg.store(request, Decoded(dense[rows], [sparse[r] for r in rows], 1))
    assert seg.remaining == 0
    result = seg.result()
    return result.dense, result.sparse


def test_assembly_maps_back_to_caller_order() -> None:
    plan = plan_segment(["x", "y", "x"], tokenizer=tok)
    dense = np.array([[1, 0], [0, 1]], dtype=np.float32)
    out, sparse = assemble(plan, dense, [{1: 1.0}, {2: 2.0}])
    assert out is not None
    assert out.tolist() == [[1, 0], [0, 1], [1, 0]]
    assert sparse == [{1: 1.0}, {2: 2.0}, {1: 1.0}]


def test_chunks_are_the_token_weighted_mean_renormalised_in_any_arrival_order() -> None:
    plan = plan_segment([LONG], tokenizer=tok, overflow="chunk", batch_size=1)
    k = len(plan.pieces)
    assert k >= 3
    assert len(plan.requests) == k  # one window per request: they arrive in reverse
    w = np.array([p.tokens for p in plan.pieces], dtype=np.float64)
    rows = np.eye(k, 8, dtype=np.float32)
    windows = [{7: 1.0}] + [{7: 3.0, 9: 1.0}] * (k - 1)
    out, sparse = assemble(plan, rows, windows)
    expected = (w[:, None] * rows).sum(axis=0)
    expected /= np.linalg.norm(expected)
    assert out is not None
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    share = w / w.sum()
    assert sparse is not None
    assert sparse[0][7] == pytest.approx(share[0] * 1.0 + share[1:].sum() * 3.0)
    assert sparse[0][9] == pytest.approx(share[1:].sum())
