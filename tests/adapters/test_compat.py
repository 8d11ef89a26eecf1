"""The compatibility suite: both adapters inside the third-party machinery users build with,
against the emulator, counting requests; a second run through a cache sends none.

Needs the ``compat`` extra (installed by ``dev``, so CI runs it). Each consumer's version is
printed in the README's table of tested consumers.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from langchain_empirio import EmpirioEmbeddings
from llamaindex_empirio import EmpirioEmbedding

from ..conftest import CORPUS, stats

KEY = "sk-compat-test-key-0123456789"
TEXT = (
    "Cats purr when they are content. They also purr when hurt. "
    "The bond market fell sharply on Monday. Yields rose to a ten-year high. "
    "Photosynthesis turns sunlight into sugar. Plants release oxygen as a result. "
)
MANY = [f"compat passage {i} about topic {i % 11}" for i in range(45)]


def lc(url: str, **kw: Any) -> EmpirioEmbeddings:
    return EmpirioEmbeddings(**{"api_key": KEY, "base_url": url, "rpm": None, "tpm": None, **kw})


def li(url: str, **kw: Any) -> EmpirioEmbedding:
    return EmpirioEmbedding(**{"api_key": KEY, "base_url": url, "rpm": None, "tpm": None, **kw})


def requests(url: str) -> int:
    return int(stats(url)["requests"])


@pytest.fixture
def url(make_emulator: Any) -> str:
    return str(make_emulator())


# ---------------------------------------------------------------------------------- LangChain


def test_cache_backed_embeddings_with_a_separate_query_store(url: str) -> None:
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_core.stores import InMemoryByteStore

    docs_store, query_store = InMemoryByteStore(), InMemoryByteStore()
    cached = CacheBackedEmbeddings.from_bytes_store(
        lc(url),
        docs_store,
        namespace="text-embedding-v4-1024",
        query_embedding_cache=query_store,
        key_encoder="sha256",
    )
    first = cached.embed_documents(MANY)
    q = cached.embed_query(MANY[0])
    sent = requests(url)
    assert sent == 5 + 1
    assert cached.embed_documents(MANY) == first
    assert cached.embed_query(MANY[0]) == q
    assert requests(url) == sent
    assert q != first[0]  # the query kept its instruction: a separate store, a separate vector


def test_semantic_chunker(url: str, tmp_path: Path) -> None:
    from langchain_experimental.text_splitter import SemanticChunker

    chunks = SemanticChunker(lc(url, cache=tmp_path / "c.sqlite3")).split_text(TEXT)
    assert "".join(chunks).replace(" ", "") == TEXT.replace(" ", "")
    sent = requests(url)
    assert sent >= 1
    again = SemanticChunker(lc(url, cache=tmp_path / "c.sqlite3")).split_text(TEXT)
    assert again == chunks
    assert requests(url) == sent


def test_faiss(url: str, tmp_path: Path) -> None:
    from langchain_community.vectorstores import FAISS

    for _ in range(2):
        store = FAISS.from_texts(CORPUS, lc(url, cache=tmp_path / "c.sqlite3"))
        hit = store.similarity_search("how do I reset my password?", k=1)[0]
        assert hit.page_content == CORPUS[0]
        if _ == 0:
            sent = requests(url)
    assert requests(url) == sent


def test_chroma(url: str, tmp_path: Path) -> None:
    import chromadb
    from langchain_chroma import Chroma

    for run in range(2):
        store = Chroma.from_texts(
            CORPUS,
            lc(url, cache=tmp_path / "c.sqlite3"),
            client=chromadb.EphemeralClient(),
            collection_name=f"compat{run}",
        )
        hit = store.similarity_search("when does the support team answer?", k=1)[0]
        assert hit.page_content == CORPUS[2]
        if run == 0:
            sent = requests(url)
    assert requests(url) == sent


def test_ensemble_retriever(url: str) -> None:
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_core.vectorstores import InMemoryVectorStore

    emb = lc(url)
    a = InMemoryVectorStore.from_texts(CORPUS[:3], emb).as_retriever(search_kwargs={"k": 1})
    b = InMemoryVectorStore.from_texts(CORPUS[3:], emb).as_retriever(search_kwargs={"k": 1})
    found = EnsembleRetriever(retrievers=[a, b], weights=[0.5, 0.5]).invoke(
        "the cat sat on the mat"
    )
    assert CORPUS[4] in [d.page_content for d in found]


def test_qdrant_hybrid_langchain(url: str) -> None:
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    dense = lc(url)
    store = QdrantVectorStore.from_texts(
        CORPUS,
        dense,
        sparse_embedding=dense.sparse(),
        location=":memory:",
        retrieval_mode=RetrievalMode.HYBRID,
    )
    assert requests(url) == 2  # its "dummy_text" size probe, then both views in one request
    hit = store.similarity_search("refund to my card", k=1)[0]
    assert hit.page_content == CORPUS[1]


def test_milvus_lite_hybrid_with_the_milvus_sparse_view(url: str, tmp_path: Path) -> None:
    from langchain_milvus import Milvus
    from langchain_milvus.utils.sparse import BaseSparseEmbedding

    dense = lc(url, dimensions=256)
    sparse = dense.milvus_sparse()
    assert isinstance(sparse, BaseSparseEmbedding)  # what Milvus checks to use a sparse field
    assert sparse.dense().dimensions == 256
    assert KEY not in repr(sparse)
    assert KEY.encode() not in pickle.dumps(sparse)
    store = Milvus.from_texts(
        CORPUS,
        [dense, sparse],
        vector_field=["dense", "sparse"],
        connection_args={"uri": str(tmp_path / "milvus.db")},
        collection_name="compat",
        # milvus-lite builds sparse indexes with no dropped weights only (its error says so).
        index_params=[
            {"index_type": "FLAT", "metric_type": "IP"},
            {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP"},
        ],
        search_params=[{"metric_type": "IP"}, {"metric_type": "IP", "params": {}}],
    )
    assert requests(url) == 1  # dense and sparse of every text from one request
    hit = store.similarity_search("how do I reset my password", k=1)[0]
    assert hit.page_content == CORPUS[0]
    assert requests(url) == 2  # the query's two views: one more request
    weights = sparse.embed_query("password reset")
    assert weights
    assert all(isinstance(k, int) and v > 0 for k, v in weights.items())


def test_lancedb_langchain(url: str, tmp_path: Path) -> None:
    import lancedb
    from langchain_community.vectorstores import LanceDB

    for run in range(2):
        store = LanceDB.from_texts(
            CORPUS,
            lc(url, cache=tmp_path / "c.sqlite3"),
            connection=lancedb.connect(str(tmp_path / f"lance{run}")),
            table_name="compat",
        )
        hit = store.similarity_search("refund to my card", k=1)[0]
        assert hit.page_content == CORPUS[1]
        if run == 0:
            sent = requests(url)
    assert requests(url) == sent


# ---------------------------------------------------------------------------------- LlamaIndex


def test_lancedb_llamaindex(url: str, tmp_path: Path) -> None:
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    store = LanceDBVectorStore(uri=str(tmp_path / "lance"), table_name="compat")
    index = VectorStoreIndex(
        [TextNode(text=t) for t in CORPUS],
        embed_model=li(url),
        storage_context=StorageContext.from_defaults(vector_store=store),
    )
    assert requests(url) == 1
    hits = index.as_retriever(similarity_top_k=1).retrieve("the cat sat on the mat")
    assert hits[0].node.get_content() == CORPUS[4]


def test_chroma_llamaindex(url: str) -> None:
    import chromadb
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    collection = chromadb.EphemeralClient().create_collection("compat_li")
    index = VectorStoreIndex(
        [TextNode(text=t) for t in CORPUS],
        embed_model=li(url, dimensions=512),
        storage_context=StorageContext.from_defaults(
            vector_store=ChromaVectorStore(chroma_collection=collection)
        ),
    )
    assert requests(url) == 1
    assert collection.count() == len(CORPUS)
    hits = index.as_retriever(similarity_top_k=1).retrieve("when does support answer chat?")
    assert hits[0].node.get_content() == CORPUS[2]


def test_ingestion_pipeline_cache_survives_a_change_of_pacing(url: str) -> None:
    from llama_index.core.ingestion import IngestionCache, IngestionPipeline
    from llama_index.core.schema import Document

    cache = IngestionCache()
    documents = [Document(text=t) for t in MANY]
    first = IngestionPipeline(transformations=[li(url)], cache=cache).run(documents=documents)
    sent = requests(url)
    assert sent == 5
    again = IngestionPipeline(
        transformations=[li(url, rpm=1000, timeout=5.0, max_concurrency=2)], cache=cache
    ).run(documents=documents)
    assert requests(url) == sent
    assert [n.embedding for n in again] == [n.embedding for n in first]


def test_semantic_splitter_node_parser(url: str, tmp_path: Path) -> None:
    from llama_index.core.node_parser import SemanticSplitterNodeParser
    from llama_index.core.schema import Document

    def split() -> list[str]:
        parser = SemanticSplitterNodeParser(embed_model=li(url, cache=tmp_path / "c.sqlite3"))
        return [n.get_content() for n in parser.get_nodes_from_documents([Document(text=TEXT)])]

    nodes = split()
    assert len(nodes) >= 1
    sent = requests(url)
    assert split() == nodes
    assert requests(url) == sent


def test_query_fusion_retriever(url: str) -> None:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.schema import TextNode

    emb = li(url)
    first = VectorStoreIndex([TextNode(text=t) for t in CORPUS[:3]], embed_model=emb)
    second = VectorStoreIndex([TextNode(text=t) for t in CORPUS[3:]], embed_model=emb)
    fusion = QueryFusionRetriever(
        [first.as_retriever(similarity_top_k=1), second.as_retriever(similarity_top_k=1)],
        llm=MockLLM(),
        num_queries=1,  # the query as given: the LLM is never asked
        mode="reciprocal_rerank",
        use_async=False,
    )
    found = [n.node.get_content() for n in fusion.retrieve("the cat on the mat")]
    assert CORPUS[4] in found


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_qdrant_hybrid_llamaindex(url: str) -> None:
    import qdrant_client
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    dense = li(url)
    sparse = dense.sparse()
    fns = sparse.qdrant_functions()
    store = QdrantVectorStore(
        collection_name="compat",
        client=qdrant_client.QdrantClient(location=":memory:"),
        enable_hybrid=True,
        sparse_doc_fn=fns["sparse_doc_fn"],
        sparse_query_fn=fns["sparse_query_fn"],
    )
    index = VectorStoreIndex(
        [TextNode(text=t) for t in CORPUS],
        embed_model=dense,
        storage_context=StorageContext.from_defaults(vector_store=store),
    )
    assert requests(url) == 1
    hits = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=1).retrieve(
        "photosynthesis and sunlight"
    )
    assert hits[0].node.get_content() == CORPUS[3]


# ---------------------------------------------------------------------------------- Jupyter


NOTEBOOK_CELLS = [
    # sync, in a kernel whose loop is running
    """
import os
from empirio import EmbeddingClient
from langchain_empirio import EmpirioEmbeddings
from llamaindex_empirio import EmpirioEmbedding
URL = os.environ["COMPAT_URL"]
client = EmbeddingClient(api_key="k", base_url=URL, rpm=None, tpm=None, dimensions=256)
print(client.embed(["a cell", "another"]).dense.shape)
""",
    # top-level await
    """
r = await client.aembed(["awaited at the top level"])
print(r.dense.shape)
e = EmpirioEmbeddings(api_key="k", base_url=URL, rpm=None, tpm=None)
print(len(await e.aembed_documents(["x", "y"])))
""",
    # VectorStoreIndex with use_async=True, several times in one kernel
    """
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import TextNode
emb = EmpirioEmbedding(api_key="k", base_url=URL, rpm=None, tpm=None)
for round in range(3):
    index = VectorStoreIndex(
        [TextNode(text=f"node {i} of round {round}") for i in range(40)],
        embed_model=emb,
        use_async=True,
    )
    print(len(index.as_retriever(similarity_top_k=2).retrieve("node 3")))
""",
    # a long ingestion with a progress bar
    """
texts = [f"long ingestion text {i}" for i in range(3000)]
emb = EmpirioEmbedding(
    api_key="k", base_url=URL, rpm=None, tpm=None, embed_batch_size=100, show_progress=True
)
vectors = emb.get_text_embedding_batch(texts, show_progress=True)
lc = EmpirioEmbeddings(api_key="k", base_url=URL, rpm=None, tpm=None, show_progress_bar=True)
print(len(vectors), len(lc.embed_documents(texts)))
""",
]


def test_jupyter_cells(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("COMPAT_URL", url)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src.strip()) for src in NOTEBOOK_CELLS]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    text = nbformat.writes(nb)
    assert '"output_type": "error"' not in text, text[-3000:]
    printed = [
        "".join(o.get("text", "") for o in c.outputs if o.get("name") == "stdout") for c in nb.cells
    ]
    assert "(2, 256)" in printed[0]
    assert printed[1].splitlines() == ["(1, 256)", "2"]
    assert printed[2].split() == ["2", "2", "2"]
    assert printed[3].strip() == "3000 3000"
    # The long ingestion's stored output stays a few lines: one bar per job, not per batch.
    stderr = "".join(o.get("text", "") for o in nb.cells[3].outputs if o.get("name") == "stderr")
    assert stderr.count("\n") <= 4, stderr[:2000]


def test_notebook_vectors_match_the_core(url: str) -> None:
    from empirio import EmbeddingClient

    core = EmbeddingClient(api_key=KEY, base_url=url, rpm=None, tpm=None)
    np.testing.assert_array_equal(
        np.array(lc(url).embed_documents(MANY), dtype=np.float32), core.embed(MANY).dense
    )
