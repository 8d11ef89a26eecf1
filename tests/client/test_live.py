"""The real service. Runs only when EMPIRIOLABS_API_KEY is set; costs a fraction of a cent."""

from __future__ import annotations

import os

import numpy as np
import pytest

from empirio import EmbeddingClient, InvalidInputError

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not os.environ.get("EMPIRIOLABS_API_KEY"),
        reason="live suite skipped: EMPIRIOLABS_API_KEY is not set (these tests call the real "
        "EmpirioLabs service)",
    ),
]


@pytest.fixture
def live() -> EmbeddingClient:
    return EmbeddingClient(dimensions=256)


def test_live_embed_documents_and_a_query(live: EmbeddingClient) -> None:
    docs = live.embed(["The cat sat on the mat.", "Interest rates rose sharply."])
    query = live.embed(["Where did the cat sit?"], kind="query")
    assert docs.dense is not None
    assert query.dense is not None
    assert docs.dense.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(docs.dense, axis=1), 1.0, rtol=1e-3)
    scores = query.dense @ docs.dense.T
    assert scores[0, 0] > scores[0, 1]
    assert live.usage.input_tokens > 0


def test_live_usage_matches_our_count(live: EmbeddingClient) -> None:
    r = live.embed(["衣服的质量杠杠的"])
    assert r.usage.input_tokens == live.count_tokens("衣服的质量杠杠的") + 1


def test_live_more_than_one_batch(live: EmbeddingClient) -> None:
    r = live.embed([f"sentence number {i}" for i in range(23)])
    assert r.dense is not None
    assert r.dense.shape == (23, 256)


def test_live_bad_input_costs_nothing(live: EmbeddingClient) -> None:
    with pytest.raises(InvalidInputError):
        live.embed(["ok", ""])
    assert live.usage.requests == 0
