"""LlamaIndex adapter against the emulator: indexes, batches, ingestion, Qdrant hybrid, secrecy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import Document, TextNode

from empirio import get_tokenizer
from empirio._options import CLIENT_OPTIONS
from llamaindex_empirio import EmpirioEmbedding, EmpirioSparseEmbedding

from ..conftest import CORPUS, stats

KEY = "sk-llamaindex-test-key-0123456789"
TEXTS = [f"passage {i} on subject {i % 9}: " + "detail " * (i % 11) for i in range(250)]


def make(url: str, **kw: Any) -> EmpirioEmbedding:
    return EmpirioEmbedding(api_key=KEY, base_url=url, rpm=None, tpm=None, **kw)


def test_vector_store_index_retrieves_the_relevant_node_first(emulator_url: str) -> None:
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(CORPUS)]
    index = VectorStoreIndex(nodes, embed_model=make(emulator_url, dimensions=512))
    hits = index.as_retriever(similarity_top_k=2).retrieve("How do I reset my password?")
    assert hits[0].node.node_id == "n0"
    hits = index.as_retriever(similarity_top_k=1).retrieve("the cat purred on the mat")
    assert hits[0].node.node_id == "n4"


def test_batch_of_250_is_split_to_the_service_limit_concurrently_and_in_order(
    make_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_emulator(latency_ms=30)
    e = make(url, max_concurrency=4)
    got = e.get_text_embedding_batch(TEXTS, show_progress=True)
    s = stats(url)
    assert s["max_inputs_per_request"] == 10
    assert 1 < s["max_in_flight"] <= 4
    assert s["requests"] == 25
    expected = e.empirio_client.embed(TEXTS).dense
    np.testing.assert_array_equal(np.array(got, dtype=np.float32), expected)
    assert "250/250" in capsys.readouterr().err  # LlamaIndex's own progress bar


async def test_async_batches_are_bounded(make_emulator: Any) -> None:
    url = make_emulator(latency_ms=30)
    # LlamaIndex gathers one coroutine per embed_batch_size chunk, all at once: 25 here.
    e = make(url, max_concurrency=3, embed_batch_size=10)
    got = await e.aget_text_embedding_batch(TEXTS)
    assert len(got) == 250
    assert 1 < stats(url)["max_in_flight"] <= 3
    assert got == e.get_text_embedding_batch(TEXTS)
    await e.empirio_client.aclose()


def test_query_methods_add_the_instruction_text_methods_never(emulator_url: str) -> None:
    e = make(emulator_url)
    core = e.empirio_client
    query = e.get_query_embedding("how do cats purr")
    text = e.get_text_embedding("how do cats purr")
    np.testing.assert_array_equal(query, core.embed(["how do cats purr"], kind="query").dense[0])  # type: ignore[index]
    np.testing.assert_array_equal(text, core.embed(["how do cats purr"]).dense[0])  # type: ignore[index]
    assert query != text


async def test_async_query_and_text(emulator_url: str) -> None:
    e = make(emulator_url)
    assert await e.aget_query_embedding("q") == e.get_query_embedding("q")
    assert await e.aget_text_embedding("t") == e.get_text_embedding("t")
    await e.empirio_client.aclose()


def test_ingestion_pipeline_embeds_every_node(emulator_url: str) -> None:
    qwen = get_tokenizer()
    docs = [Document(text=" ".join(CORPUS * 4), id_=f"d{i}") for i in range(3)]
    pipeline = IngestionPipeline(
        transformations=[
            SentenceSplitter(chunk_size=64, chunk_overlap=0, tokenizer=qwen.encode),
            make(emulator_url, dimensions=256),
        ]
    )
    nodes = pipeline.run(documents=docs)
    assert len(nodes) > 3
    assert all(n.embedding is not None and len(n.embedding) == 256 for n in nodes)


def test_callbacks_fire(emulator_url: str) -> None:
    debug = LlamaDebugHandler()
    e = make(emulator_url, callback_manager=CallbackManager([debug]), embed_batch_size=20)
    e.get_text_embedding_batch(TEXTS[:50])
    pairs = debug.get_event_pairs(CBEventType.EMBEDDING)
    assert len(pairs) == 3  # 20 + 20 + 10


def test_serialisation_never_contains_the_key(emulator_url: str) -> None:
    dense = make(emulator_url)
    sparse = dense.sparse()  # BaseSparseEmbedding has no to_json(); pydantic's dumps instead
    for obj in (dense, sparse):
        shown = [repr(obj), str(obj), obj.model_dump_json(), str(obj.model_dump())]
        if obj is dense:
            shown += [dense.to_json(), str(dense.to_dict())]
        for text in shown:
            assert KEY not in text
        assert obj.api_key is not None
        assert obj.api_key.get_secret_value() == KEY


def test_class_names_and_defaults() -> None:
    e = EmpirioEmbedding(api_key=KEY)
    assert EmpirioEmbedding.class_name() == "EmpirioEmbedding"
    assert EmpirioSparseEmbedding.class_name() == "EmpirioSparseEmbedding"
    assert e.model_name == "text-embedding-v4"
    assert e.dimensions == 1024
    assert e.to_dict()["class_name"] == "EmpirioEmbedding"


def test_misspelt_argument_and_bad_dimensions(emulator_url: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="dimenions"):
        EmpirioEmbedding(api_key=KEY, dimenions=512)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match=r"choose one of \[64") as info:
        EmpirioEmbedding(api_key=KEY, dimensions=100)
    assert KEY not in str(info.value)


def test_every_core_option_is_a_field() -> None:
    renamed = {"model": "model_name"}
    wanted = {renamed.get(n, n) for n in CLIENT_OPTIONS} - {"share_views"}
    assert wanted <= set(EmpirioEmbedding.model_fields)
    assert wanted <= set(EmpirioSparseEmbedding.model_fields)


def test_sparse_embedding_returns_token_id_weights(emulator_url: str) -> None:
    s = EmpirioSparseEmbedding(api_key=KEY, base_url=emulator_url, rpm=None, tpm=None)
    vec = s.get_text_embedding("the wind blows")
    assert vec
    assert get_tokenizer().encode(" wind")[0] in vec
    assert all(isinstance(k, int) and v > 0 for k, v in vec.items())
    batch = s.get_text_embedding_batch(CORPUS)
    assert len(batch) == len(CORPUS)


def test_siblings_share_one_request_per_text(make_emulator: Any) -> None:
    url = make_emulator()
    dense = make(url)
    sparse = dense.sparse()
    dense.get_text_embedding_batch(CORPUS)
    sparse.get_text_embedding_batch(CORPUS)
    assert stats(url)["requests"] == 1
    assert sparse.dense().empirio_client is dense.empirio_client


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_qdrant_hybrid_offline_with_one_request_per_text(make_emulator: Any) -> None:
    import qdrant_client
    from llama_index.core import StorageContext
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    url = make_emulator()
    dense = make(url, dimensions=256)
    sparse = dense.sparse()
    store = QdrantVectorStore(
        client=qdrant_client.QdrantClient(location=":memory:"),
        collection_name="hybrid",
        enable_hybrid=True,
        **sparse.qdrant_functions(),
    )
    nodes = [
        TextNode(text=t, id_=f"00000000-0000-0000-0000-00000000000{i}")
        for i, t in enumerate(CORPUS)
    ]
    index = VectorStoreIndex(
        nodes, embed_model=dense, storage_context=StorageContext.from_defaults(vector_store=store)
    )
    assert stats(url)["requests"] == 1  # dense from the index, sparse parked for Qdrant
    retriever = index.as_retriever(
        vector_store_query_mode="hybrid", similarity_top_k=2, sparse_top_k=2
    )
    hits = retriever.retrieve("How do I reset my password?")
    assert hits[0].node.node_id.endswith("0")
    assert stats(url)["requests"] == 2  # the query's two views, one request


def test_instrumentation_events_fire(emulator_url: str) -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events import BaseEvent

    seen: list[str] = []

    class Recorder(BaseEventHandler):
        def handle(self, event: BaseEvent, **kwargs: Any) -> None:
            seen.append(type(event).__name__)

    root = get_dispatcher()
    recorder = Recorder()
    root.add_event_handler(recorder)
    try:
        e = make(emulator_url, embed_batch_size=10)
        e.get_text_embedding_batch(TEXTS[:25])
        e.get_query_embedding("q")
        e.sparse().get_query_embedding("q")
    finally:
        root.event_handlers.remove(recorder)
    assert seen.count("EmbeddingStartEvent") == 3 + 1
    assert seen.count("EmbeddingEndEvent") == 3 + 1
    assert seen.count("SparseEmbeddingStartEvent") == 1


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_bad_text_is_named_by_its_position_in_the_whole_list_before_sending(
    make_emulator: Any, use_async: bool
) -> None:
    from empirio import InvalidInputError

    url = make_emulator()
    e = make(url, embed_batch_size=100)
    texts = [f"text {i}" for i in range(300)]
    texts[150] = "   "

    async def embed() -> object:
        if use_async:
            return await e.aget_text_embedding_batch(texts)
        return e.get_text_embedding_batch(texts)

    with pytest.raises(InvalidInputError, match=r"position \[150\]"):
        await embed()
    assert stats(url)["requests"] == 0


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_large_job_is_one_pipelined_call_and_every_chunk_event_still_fires(
    make_emulator: Any, use_async: bool
) -> None:
    url = make_emulator()
    debug = LlamaDebugHandler()
    e = make(url, embed_batch_size=100, callback_manager=CallbackManager([debug]))
    texts = [f"job passage {i} about {i % 13}" for i in range(1200)]
    got = (
        await e.aget_text_embedding_batch(texts) if use_async else e.get_text_embedding_batch(texts)
    )
    if use_async:
        await e.empirio_client.aclose()
    assert stats(url)["requests"] == 120  # fetched once, then served to LlamaIndex's 12 chunks
    assert len(debug.get_event_pairs(CBEventType.EMBEDDING)) == 12
    expected = e.empirio_client.embed(texts).dense
    np.testing.assert_array_equal(np.array(got, dtype=np.float32), expected)
