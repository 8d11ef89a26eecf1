"""EmbeddingClient's calls against the emulator over loopback sockets, sync and async:
vectors in order, batching, concurrency, queries and sparse output, over-length texts, streams
and large calls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from empirio import (
    EmbeddingClient,
    InsufficientCreditsError,
    InvalidInputError,
    TruncationWarning,
    UnsupportedFeatureError,
    format_query,
)
from empirio._core.config import DEFAULT_QUERY_INSTRUCTION
from empirio._core.tokens import get_tokenizer
from empirio.emulator import text_key

from ..conftest import stats
from .conftest import TEXTS, client

# ---------------------------------------------------------------- basics


def test_embed_returns_unit_vectors_in_order(emulator_url: str) -> None:
    with client(emulator_url, dimensions=256) as c:
        r = c.embed(["alpha", "beta", "gamma"])
        assert r.dense is not None
        assert r.dense.shape == (3, 256)
        assert r.dense.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(r.dense, axis=1), 1.0, rtol=1e-5)
        single = c.embed(["beta"]).dense
        assert single is not None
        np.testing.assert_array_equal(single[0], r.dense[1])


def test_empty_list_sends_nothing(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c:
        r = c.embed([])
        assert r.dense is not None
        assert r.dense.shape == (0, 1024)
    assert stats(url)["requests"] == 0


def test_usage_and_cost_follow_the_service(emulator_url: str) -> None:
    with client(emulator_url) as c:
        r = c.embed(["衣服的质量杠杠的", "我想知道迪士尼的退票政策"])
        assert r.usage.input_tokens == 14
        assert r.usage.requests == 1
        assert c.usage.input_tokens == 14
        assert r.usage.cost_usd == pytest.approx(14 * 0.07 / 1e6)
        assert c.count_tokens("衣服的质量杠杠的") == 5


def test_float_and_base64_give_the_same_vectors(emulator_url: str) -> None:
    with client(emulator_url, encoding_format="float") as f, client(emulator_url) as b:
        np.testing.assert_array_equal(f.embed(TEXTS[:12]).dense, b.embed(TEXTS[:12]).dense)


def test_identical_texts_are_sent_once(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c:
        r = c.embed(["same", "other", "same", "same"])
    assert r.dense is not None
    np.testing.assert_array_equal(r.dense[0], r.dense[2])
    s = stats(url)
    assert s["inputs_embedded"] == 2
    assert s["delivered"][text_key("same")] == 1


def test_requests_hold_at_most_batch_size_inputs(make_emulator: Any) -> None:
    url = make_emulator(max_batch=2048)
    with client(url, batch_size=7) as c:
        c.embed(TEXTS)
    assert stats(url)["max_inputs_per_request"] == 7


def test_concurrency_is_bounded(make_emulator: Any) -> None:
    url = make_emulator(latency_ms=40)
    with client(url, max_concurrency=3) as c:
        c.embed(TEXTS)
    assert 1 < stats(url)["max_in_flight"] <= 3


async def test_async_concurrency_is_bounded_and_results_match(
    make_emulator: Any, reference: np.ndarray
) -> None:
    url = make_emulator(latency_ms=40)
    async with client(url, max_concurrency=4) as c:
        r = await c.aembed(TEXTS)
    np.testing.assert_array_equal(r.dense, reference)
    assert 1 < stats(url)["max_in_flight"] <= 4


# ---------------------------------------------------------------- queries and sparse


def test_query_instruction_modes(emulator_url: str) -> None:
    with (
        client(emulator_url) as prompt,
        client(emulator_url, instruction_mode="api") as api,
        client(emulator_url, instruction_mode="none") as none,
    ):
        q1 = prompt.embed(["how do cats purr"], kind="query").dense
        q2 = api.embed(["how do cats purr"], kind="query").dense
        q3 = none.embed(["how do cats purr"], kind="query").dense
        doc = prompt.embed(["how do cats purr"]).dense
        manual = prompt.embed([format_query("how do cats purr", DEFAULT_QUERY_INSTRUCTION)]).dense
    np.testing.assert_array_equal(q1, q2)  # the emulator applies the same template
    np.testing.assert_array_equal(q1, manual)
    np.testing.assert_array_equal(q3, doc)
    assert not np.array_equal(q1, doc)


def test_sparse_and_both_come_from_one_request(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c:
        both = c.embed(["the wind blows", "a calm sea"], output="both")
        assert both.dense is not None
        assert both.sparse is not None
        tok = get_tokenizer()
        assert tok.encode(" wind")[0] in both.sparse[0]
        assert all(v > 0 for vec in both.sparse for v in vec.values())
        only = c.embed(["the wind blows"], output="sparse")
        assert only.dense is None
        assert only.sparse == both.sparse[:1]
    assert stats(url)["requests"] == 2


def test_sparse_on_an_endpoint_without_it_says_so(make_emulator: Any) -> None:
    url = make_emulator(sparse_output=False)
    with client(url) as c, pytest.raises(UnsupportedFeatureError, match="does not support sparse"):
        c.embed(["x"], output="sparse")


# ---------------------------------------------------------------- over-length policy


LONG = " ".join(f"w{i}" for i in range(4000))


def test_overflow_truncate_warns_once_with_position_and_count(emulator_url: str) -> None:
    n = get_tokenizer().count(LONG)
    with client(emulator_url) as c, pytest.warns(TruncationWarning) as record:
        r = c.embed(["short", LONG, LONG + " x"])
    assert len(record) == 1
    assert f"1 ({n:,} tokens)" in str(record[0].message)
    assert r.dense is not None
    assert r.dense.shape == (3, 1024)


def test_overflow_chunk_embeds_every_window(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url, overflow="chunk") as c:
        r = c.embed(["short", LONG])
    windows = -(-get_tokenizer().count(LONG) // 8191)
    assert stats(url)["inputs_embedded"] == 1 + windows
    assert r.dense is not None
    np.testing.assert_allclose(np.linalg.norm(r.dense, axis=1), 1.0, rtol=1e-5)


def test_overflow_error_raises_before_any_request(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url, overflow="error") as c, pytest.raises(InvalidInputError, match="position 1"):
        c.embed(["short", LONG])
    assert stats(url)["requests"] == 0


# ---------------------------------------------------------------- streaming


def test_iter_embed_streams_a_generator_in_order(make_emulator: Any, reference: np.ndarray) -> None:
    url = make_emulator()

    def gen() -> Iterator[str]:
        yield from TEXTS

    with client(url) as c:
        parts = list(c.iter_embed(gen(), segment_size=30))
    assert [p.offset for p in parts] == [0, 30, 60, 90, 120]
    np.testing.assert_array_equal(np.vstack([p.dense for p in parts]), reference)


async def test_aiter_embed_streams_in_order(emulator_url: str, reference: np.ndarray) -> None:
    async with client(emulator_url) as c:
        parts = [p async for p in c.aiter_embed(TEXTS, segment_size=50)]
    assert [p.offset for p in parts] == [0, 50, 100]
    np.testing.assert_array_equal(np.vstack([p.dense for p in parts]), reference)


def test_iter_embed_reports_a_bad_text_in_a_list_before_sending(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c, pytest.raises(InvalidInputError, match=r"\[120\]"):
        list(c.iter_embed([*TEXTS[:120], " "], segment_size=10))
    assert stats(url)["requests"] == 0


class SourceBroke(Exception):
    """The caller's own failure, raised by its iterable halfway."""


def test_a_source_that_fails_halfway_keeps_every_row_read_before_it(
    make_emulator: Any, reference: np.ndarray
) -> None:
    """Before: the segment in flight when the source failed was dropped (paid for, never
    delivered), where a bad text at the same place delivered every row before it."""
    url = make_emulator()

    def gen() -> Iterator[str]:
        yield from TEXTS[:115]
        raise SourceBroke("the database cursor closed")

    parts: list[Any] = []
    with client(url) as c, pytest.raises(SourceBroke, match="cursor closed"):
        parts.extend(c.iter_embed(gen(), segment_size=30))
    assert sum(len(p) for p in parts) == 115  # 30, 30, 30 and the 25 read before it broke
    np.testing.assert_array_equal(np.vstack([p.dense for p in parts]), reference[:115])
    assert stats(url)["inputs_embedded"] == 115  # each paid for once, each delivered


async def test_an_async_stream_whose_source_fails_keeps_every_row(
    make_emulator: Any, reference: np.ndarray
) -> None:
    url = make_emulator()

    def gen() -> Iterator[str]:
        yield from TEXTS[:70]
        raise SourceBroke("gone")

    parts: list[Any] = []

    async def take(c: Any) -> None:
        async for part in c.aiter_embed(gen(), segment_size=50):
            parts.append(part)

    async with client(url) as c:
        with pytest.raises(SourceBroke):
            await take(c)
    np.testing.assert_array_equal(np.vstack([p.dense for p in parts]), reference[:70])


def test_stopping_early_leaves_the_client_usable(emulator_url: str) -> None:
    with client(emulator_url, max_concurrency=4) as c:
        for part in c.iter_embed(TEXTS, segment_size=20):
            assert part.offset == 0
            break
        assert c.embed(["again"]).dense is not None


def test_progress_bar_counts_inputs(emulator_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with client(emulator_url, show_progress=True) as c:
        c.embed(TEXTS)
    err = capsys.readouterr().err
    assert f"{len(TEXTS)}/{len(TEXTS)}" in err


async def test_many_concurrent_calls_share_the_concurrency_limit(make_emulator: Any) -> None:
    url = make_emulator(latency_ms=30)
    async with client(url, max_concurrency=3) as c:
        parts = await asyncio.gather(*(c.aembed(TEXTS[i : i + 10]) for i in range(0, 130, 10)))
    assert [len(p) for p in parts] == [10] * 13
    assert 1 < stats(url)["max_in_flight"] <= 3


def test_threads_share_the_concurrency_limit(make_emulator: Any) -> None:
    import concurrent.futures

    url = make_emulator(latency_ms=30)
    with client(url, max_concurrency=2) as c, concurrent.futures.ThreadPoolExecutor(6) as pool:
        parts = list(pool.map(lambda i: c.embed(TEXTS[i : i + 20]), range(0, 120, 20)))
    assert [len(p) for p in parts] == [20] * 6
    assert stats(url)["max_in_flight"] <= 2


@pytest.mark.parametrize(
    ("how", "slots"),
    [("threads", 1), ("threads", 2), ("tasks", 1), ("loops", 1)],
    ids=["threads-one-slot", "threads-two-slots", "tasks-one-slot", "loops-one-slot"],
)
def test_calls_waiting_for_a_slot_take_it_as_soon_as_it_is_free(
    make_emulator: Any, monkeypatch: pytest.MonkeyPatch, how: str, slots: int
) -> None:
    """Six callers of one client, one or two slots between them: a caller waiting for a slot is
    woken as a request of the client ends, whoever sent it (threads on the caller's-thread path
    and on the I/O thread's, tasks of one loop, loops of their own threads). The polls that
    were the only way to notice (every 10 ms times the callers per slot, and the sync shell's
    0.5 s slices) are made an hour here: without the wake-up the calls would never end."""
    import threading

    from empirio._io import session, sync

    monkeypatch.setattr(session, "SLOT_POLL_S", 3600.0)
    monkeypatch.setattr(sync, "_WAIT_SLICE_S", 3600.0)
    url = make_emulator(latency_ms=20)
    parts: dict[int, Any] = {}
    with client(url, max_concurrency=slots) as c:

        def call(i: int) -> None:
            texts = TEXTS[i * 20 : i * 20 + 20]
            parts[i] = asyncio.run(c.aembed(texts)) if how == "loops" else c.embed(texts)

        if how == "tasks":

            async def tasks() -> None:
                got = await asyncio.gather(
                    *(c.aembed(TEXTS[i : i + 20]) for i in range(0, 120, 20))
                )
                parts.update(enumerate(got))

            runner = threading.Thread(target=asyncio.run, args=(tasks(),), daemon=True)
            runners = [runner]
        else:  # daemon threads: were one to hang, it would not hold the test run at its exit
            runners = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(6)]
        for thread in runners:
            thread.start()
        for thread in runners:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in runners), "a caller never got a slot"
    assert sorted(parts) == list(range(6))
    assert [len(p) for p in parts.values()] == [20] * 6
    assert stats(url)["max_in_flight"] <= slots


def test_callers_sharing_slots_are_served_in_turn(make_emulator: Any) -> None:
    """Three tasks of one loop on two slots, each making its calls one after another: a freed
    slot goes to the call refused one first, not to the task whose call just ended (which asks
    first, being the one running). Until one of them is done, no task is more than a few calls
    behind another; before, one task waited while the other two went on for up to 20 calls."""
    url = make_emulator(latency_ms=20)
    done: list[int] = []
    with client(url, max_concurrency=2) as c:

        async def work(who: int) -> None:
            for k in range(15):
                await c.aembed([f"turn {who} {k} {j}" for j in range(10)])
                done.append(who)

        async def everyone() -> None:
            await asyncio.gather(*(work(who) for who in range(3)))

        asyncio.run(everyone())
    counts = [0, 0, 0]
    spreads = []
    for who in done:
        counts[who] += 1
        if max(counts) == 15:
            break
        spreads.append(max(counts) - min(counts))
    assert max(spreads) <= 3, (max(spreads), done)
    assert stats(url)["max_in_flight"] <= 2


def test_dense_rows_are_python_floats_and_refused_for_sparse_only(emulator_url: str) -> None:
    with client(emulator_url, dimensions=64) as c:
        rows = c.embed(["a", "b"]).dense_rows()
        assert len(rows) == 2
        assert all(type(x) is float for x in rows[1])
        with pytest.raises(ValueError, match="no dense vectors"):
            c.embed(["a"], output="sparse").dense_rows()


@pytest.mark.parametrize("use_async", [False, True])
async def test_shared_views_report_progress_for_every_text(
    emulator_url: str, use_async: bool
) -> None:
    texts = [f"shared view progress {i}" for i in range(25)]
    seen: list[int] = []
    async with client(emulator_url, share_views=True) as c:
        for output in ("dense", "sparse"):  # fetched, then served from the parked view
            if use_async:
                await c.aembed(texts + texts[:5], output=output, on_progress=seen.append)
            else:
                c.embed(texts + texts[:5], output=output, on_progress=seen.append)
            assert sum(seen) == 30, (output, seen)
            seen.clear()


def test_truncation_warnings_point_at_the_callers_line(emulator_url: str) -> None:
    from empirio import TruncationWarning

    long = "word " * 9000
    with client(emulator_url) as c:
        with pytest.warns(TruncationWarning) as caught:
            c.embed(["short", long])
        assert caught[0].filename == __file__
        with pytest.warns(TruncationWarning) as caught:
            list(c.iter_embed(["short", long], segment_size=1))
        assert caught[0].filename == __file__


MANY = [f"pipelined text {i} on subject {i % 17}" for i in range(2500)]


@pytest.mark.parametrize("use_async", [False, True])
async def test_large_calls_are_planned_in_segments_and_come_back_whole_and_in_order(
    make_emulator: Any, use_async: bool
) -> None:
    url = make_emulator()
    with client(url) as c:
        reference = np.concatenate(
            [c.embed(MANY[i : i + 500]).dense for i in range(0, 2500, 500)]  # type: ignore[misc]
        )
        got = await c.aembed(MANY) if use_async else c.embed(MANY)
        if use_async:
            await c.aclose()
    np.testing.assert_array_equal(got.dense, reference)
    assert got.usage.requests == 250


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_402_in_a_later_segment_keeps_every_earlier_text(
    make_emulator: Any, use_async: bool
) -> None:
    tokens = get_tokenizer()
    first = sum(tokens.count(t) + 1 for t in MANY[:1500])
    plain = make_emulator()
    with client(plain) as c:
        reference = c.embed(MANY[:500]).dense
    url = make_emulator(credit_tokens=first)

    async def embed(c: EmbeddingClient) -> object:
        return await c.aembed(MANY) if use_async else c.embed(MANY)

    with client(url, max_concurrency=1) as c, pytest.raises(InsufficientCreditsError) as info:
        await embed(c)
    err = info.value
    assert err.partial_indices == tuple(range(1500))
    assert err.partial is not None
    np.testing.assert_array_equal(err.partial.dense[:500], reference)  # type: ignore[index]


async def test_embed_as_lists_is_embed_then_dense_rows(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c:
        expected = c.embed(MANY).dense_rows()
        assert c.embed_as_lists(MANY) == expected
        assert await c.aembed_as_lists(MANY) == expected
        assert c.embed_as_lists(MANY[:5]) == expected[:5]  # small calls: one plan, same result
        await c.aclose()
