"""Concurrent small calls of one client share requests (``coalesce``), against the emulator
over loopback: an async burst, threads, queries beside documents, and errors per caller."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from empirio import EmbeddingClient, InvalidInputError

from ..conftest import stats

QUESTIONS = [f"how do I reset password number {i}?" for i in range(50)]


def test_fifty_concurrent_queries_at_50_rpm_take_a_handful_of_requests(
    emulator_process: Any,
) -> None:
    """Before: 50 requests of one text, a minute at the account's 50 a minute."""
    from langchain_empirio import EmpirioEmbeddings

    url = emulator_process("--rpm", "50", "--tpm", "2000000")
    emb = EmpirioEmbeddings(api_key="k", base_url=url, rpm=50, dimensions=256)

    async def burst() -> list[list[float]]:
        return await asyncio.gather(*(emb.aembed_query(q) for q in QUESTIONS))

    vectors = asyncio.run(burst())
    s = stats(url)
    assert s["requests"] < 10
    assert s["by_status"] == {"200": s["requests"]}
    # Each caller got its own vector: the one an uncoalesced call returns.
    alone = EmbeddingClient(
        api_key="k", base_url=url, rpm=None, tpm=None, dimensions=256, coalesce=False
    )
    expected = alone.embed([QUESTIONS[7], QUESTIONS[42]], kind="query").dense
    assert expected is not None
    assert np.allclose(np.array([vectors[7], vectors[42]]), expected, atol=1e-6)


def test_threads_calling_embed_query_share_requests(emulator_process: Any) -> None:
    url = emulator_process("--rpm", "120", "--tpm", "2000000")
    c = EmbeddingClient(api_key="k", base_url=url, rpm=120, dimensions=64)
    out: dict[int, Any] = {}
    go = threading.Barrier(20)

    def ask(i: int) -> None:
        go.wait()
        out[i] = c.embed([QUESTIONS[i]], kind="query").dense

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == list(range(20))
    assert stats(url)["requests"] < 20
    alone = (
        EmbeddingClient(
            api_key="k", base_url=url, rpm=None, tpm=None, dimensions=64, coalesce=False
        )
        .embed(QUESTIONS[:20], kind="query")
        .dense
    )
    assert alone is not None
    assert np.allclose(np.vstack([out[i] for i in range(20)]), alone, atol=1e-6)


def test_queries_and_documents_are_never_mixed_and_errors_stay_with_their_caller(
    emulator_url: str,
) -> None:
    c = EmbeddingClient(api_key="k", base_url=emulator_url, rpm=None, tpm=None, dimensions=64)
    before = stats(emulator_url)["requests"]

    async def mixed() -> list[Any]:
        calls = [c.aembed([f"query {i}"], kind="query") for i in range(4)]
        calls += [c.aembed([f"document {i}"]) for i in range(4)]
        calls.append(c.aembed(["   "], kind="query"))  # blank: this caller's error alone
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(mixed())
    assert isinstance(results[-1], InvalidInputError)
    assert all(not isinstance(r, BaseException) for r in results[:-1])
    assert stats(emulator_url)["requests"] - before == 2  # one of queries, one of documents
    alone = EmbeddingClient(
        api_key="k", base_url=emulator_url, rpm=None, tpm=None, dimensions=64, coalesce=False
    )
    q = alone.embed(["query 2"], kind="query").dense
    d = alone.embed(["document 2"]).dense
    assert np.allclose(results[2].dense, q, atol=1e-6)
    assert np.allclose(results[6].dense, d, atol=1e-6)


def test_coalesce_off_sends_each_call_alone(emulator_url: str) -> None:
    c = EmbeddingClient(api_key="k", base_url=emulator_url, rpm=None, tpm=None, coalesce=False)
    before = stats(emulator_url)["requests"]

    async def burst() -> None:
        await asyncio.gather(*(c.aembed([q], kind="query") for q in QUESTIONS[:5]))

    asyncio.run(burst())
    assert stats(emulator_url)["requests"] - before == 5


@pytest.mark.parametrize("cancel_first", [True, False])
def test_a_caller_cancelled_while_waiting_does_not_cancel_the_others(
    emulator_url: str, cancel_first: bool
) -> None:
    c = EmbeddingClient(api_key="k", base_url=emulator_url, rpm=None, tpm=None, dimensions=64)

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(c.aembed([q], kind="query")) for q in QUESTIONS[:6]]
        await asyncio.sleep(0)
        tasks[0 if cancel_first else 3].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    cancelled = [isinstance(r, asyncio.CancelledError) for r in results]
    assert sum(cancelled) == 1
    assert all(r.dense is not None for r in results if not isinstance(r, BaseException))
