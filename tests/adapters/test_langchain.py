"""LangChain adapter: LangChain's standard suites, vector stores, hybrid search, secrecy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydantic
import pytest
import pytest_socket
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from empirio._options import CLIENT_OPTIONS
from langchain_empirio import EmpirioEmbeddings, EmpirioSparseEmbeddings

from ..conftest import CORPUS, stats

KEY = "sk-langchain-test-key-0123456789"


def make(url: str, **kw: Any) -> EmpirioEmbeddings:
    return EmpirioEmbeddings(api_key=KEY, base_url=url, rpm=None, tpm=None, **kw)


class TestEmpirioEmbeddingsUnit(EmbeddingsUnitTests):
    """LangChain's standard unit tests, with sockets disabled."""

    @pytest.fixture(autouse=True)
    def _no_network(self) -> Iterator[None]:
        pytest_socket.disable_socket(allow_unix_socket=True)
        yield
        pytest_socket.enable_socket()

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return EmpirioEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"api_key": KEY, "base_url": "https://api.empiriolabs.ai/v1", "dimensions": 512}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"EMPIRIOLABS_API_KEY": KEY, "EMPIRIOLABS_API_BASE": "https://example.test/v1"},
            {"dimensions": 256},
            {"api_key": KEY, "base_url": "https://example.test/v1", "dimensions": 256},
        )


class TestEmpirioEmbeddingsIntegration(EmbeddingsIntegrationTests):
    """LangChain's standard integration tests, against the emulator over loopback."""

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return EmpirioEmbeddings

    @pytest.fixture
    def model(self, emulator_url: str) -> EmpirioEmbeddings:
        return make(emulator_url)


def test_no_network_at_construction() -> None:
    pytest_socket.disable_socket(allow_unix_socket=True)
    try:
        e = EmpirioEmbeddings(api_key=KEY, base_url="https://api.empiriolabs.ai/v1")
        assert e.dimensions == 1024
        assert e.model == "text-embedding-v4"
    finally:
        pytest_socket.enable_socket()


def test_values_are_python_floats_and_queries_get_the_instruction(emulator_url: str) -> None:
    e = make(emulator_url, dimensions=256)
    docs = e.embed_documents(["how do cats purr"])
    query = e.embed_query("how do cats purr")
    assert all(type(x) is float for x in docs[0])
    assert len(query) == 256
    core = e.empirio_client
    np.testing.assert_array_equal(query, core.embed(["how do cats purr"], kind="query").dense[0])  # type: ignore[index]
    assert docs[0] != query


def test_async_methods_are_native() -> None:
    assert EmpirioEmbeddings.aembed_documents is not Embeddings.aembed_documents
    assert EmpirioEmbeddings.aembed_query is not Embeddings.aembed_query


async def test_async_matches_sync(emulator_url: str) -> None:
    e = make(emulator_url)
    assert await e.aembed_documents(CORPUS) == e.embed_documents(CORPUS)
    assert await e.aembed_query("cats") == e.embed_query("cats")
    await e.empirio_client.aclose()


def test_generators_are_embedded_whole(emulator_url: str) -> None:
    emb = make(emulator_url)
    texts = [f"generated text {i}" for i in range(25)]
    assert emb.embed_documents(t for t in texts) == emb.embed_documents(texts)  # type: ignore[arg-type]


def test_misspelt_argument_is_an_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="dimenions"):
        EmpirioEmbeddings(api_key=KEY, dimenions=512)  # type: ignore[call-arg]


def test_bad_settings_are_clear_and_hide_the_key() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"choose one of \[64, 128") as info:
        EmpirioEmbeddings(api_key=KEY, dimensions=100)
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value.errors())
    with pytest.raises(ValueError, match="clear text") as bad_url:
        EmpirioEmbeddings(api_key=KEY, base_url="http://api.example.com/v1")
    assert KEY not in str(bad_url.value)
    assert KEY not in repr(bad_url.value.__dict__)


def test_the_key_never_shows(emulator_url: str) -> None:
    e = make(emulator_url)
    s = e.sparse()
    for obj in (e, s):
        shown = [
            repr(obj),
            str(obj),
            json.dumps(obj.model_dump(mode="json")),
            obj.model_dump_json(),
            str(obj.model_dump()),
        ]
        for text in shown:
            assert KEY not in text
    assert e.api_key is not None
    assert e.api_key.get_secret_value() == KEY


def test_everything_the_core_offers_is_reachable() -> None:
    renamed = {"show_progress": "show_progress_bar", "async_http_client": "http_async_client"}
    # share_views is what .sparse()/.dense() switch on; not a field of its own.
    wanted = {renamed.get(n, n) for n in CLIENT_OPTIONS} - {"share_views"}
    assert wanted <= set(EmpirioEmbeddings.model_fields)


def test_in_memory_vector_store_ranks_the_relevant_document_first(emulator_url: str) -> None:
    store = InMemoryVectorStore.from_texts(CORPUS, make(emulator_url, dimensions=512))
    hits = store.similarity_search("How do I reset my password?", k=2)
    assert hits[0].page_content == CORPUS[0]
    hits = store.similarity_search("cat purred on the mat", k=1)
    assert hits[0].page_content == CORPUS[4]


def test_sparse_vectors_have_unique_indices_and_equal_lengths(emulator_url: str) -> None:
    s = EmpirioSparseEmbeddings(api_key=KEY, base_url=emulator_url, rpm=None, tpm=None)
    for vec in [*s.embed_documents(CORPUS), s.embed_query("reset password")]:
        assert len(vec.indices) == len(vec.values) > 0
        assert len(set(vec.indices)) == len(vec.indices)
        assert all(v > 0 for v in vec.values)


def test_dense_and_sparse_siblings_share_one_request_per_text(make_emulator: Any) -> None:
    url = make_emulator()
    dense = make(url)
    sparse = dense.sparse()
    assert sparse.empirio_client is dense.empirio_client
    d = dense.embed_documents(CORPUS)
    s = sparse.embed_documents(CORPUS)
    assert len(d) == len(s) == len(CORPUS)
    assert stats(url)["requests"] == 1
    # And the other way round, for queries:
    sparse.embed_query("reset my password")
    dense.embed_query("reset my password")
    assert stats(url)["requests"] == 2
    assert sparse.dense().empirio_client is dense.empirio_client


async def test_async_siblings_share_too(make_emulator: Any) -> None:
    url = make_emulator()
    dense = make(url)
    sparse = dense.sparse()
    await dense.aembed_documents(CORPUS)
    await sparse.aembed_documents(CORPUS)
    assert stats(url)["requests"] == 1
    await dense.empirio_client.aclose()


def test_qdrant_hybrid_end_to_end_with_one_request_per_batch(make_emulator: Any) -> None:
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    url = make_emulator()
    dense = make(url, dimensions=256)
    store = QdrantVectorStore.from_texts(
        CORPUS * 3,  # 15 texts, one Qdrant batch, deduplicated to 5 inputs in one request
        dense,
        sparse_embedding=dense.sparse(),
        location=":memory:",
        collection_name="hybrid",
        retrieval_mode=RetrievalMode.HYBRID,
    )
    # langchain-qdrant first embeds "dummy_text" to learn the vector size (its own probe);
    # then dense and sparse of the 5 distinct texts come from one request.
    assert stats(url)["requests"] == 2
    hits = store.similarity_search("How do I reset my password?", k=1)
    assert hits[0].page_content == CORPUS[0]
    assert stats(url)["requests"] == 3  # the query: dense and sparse from one request
    more = [f"extra document number {i} about gardens" for i in range(130)]
    store.add_texts(more, batch_size=64)  # Qdrant's batches of 64: 3 batches
    s = stats(url)
    assert s["requests"] == 3 + 7 + 7 + 1  # 64 -> 7 requests of <=10, 64 -> 7, 2 -> 1
    assert s["inputs_embedded"] == 1 + 5 + 1 + 130
