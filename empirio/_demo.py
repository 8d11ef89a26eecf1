"""``empirio demo``: embed a small multilingual corpus through the LangChain and LlamaIndex
adapters and search it, dense and hybrid, in seconds.

With ``EMPIRIOLABS_API_KEY`` set it uses the real service; without, a local emulator, and says so.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._client import EmbeddingClient
from ._config import API_BASE_ENV, API_KEY_ENV, DEFAULT_BASE_URL, resolve_base_url

__all__ = ["QUERIES", "load_corpus", "run_demo"]

QUERIES = (
    "How do I change my password?",
    "退票政策是什么？",
    "how do plants make oxygen",
    "when does the support team answer chat messages?",
)


def load_corpus() -> list[dict[str, str]]:
    """The bundled demo corpus: a dozen short texts in six languages (id, lang, text)."""
    raw = importlib.resources.files("empirio").joinpath("data/demo_corpus.jsonl").read_text()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


@contextlib.contextmanager
def _endpoint(use_emulator: bool) -> Iterator[tuple[str | None, str | None, str]]:
    """(base_url, api_key, label): the emulator unless a key is present."""
    if not use_emulator:
        base = resolve_base_url(None)
        where = (
            "the real EmpirioLabs service"
            if base == DEFAULT_BASE_URL
            else f"{base} (from {API_BASE_ENV})"
        )
        yield None, None, f"{where}, with the key in {API_KEY_ENV}"
        return
    from .emulator import serve

    with serve() as url:
        yield url, "emulator-key", f"the LOCAL EMULATOR at {url} (no key set)"


def _short(text: str, width: int = 58) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _searchers(
    client: EmbeddingClient, corpus: list[dict[str, str]]
) -> list[tuple[str, Callable[[str], tuple[str, float | None]]]]:
    """(label, search) per framework path; each search returns (doc id, score) of the top hit."""
    texts = [d["text"] for d in corpus]
    ids = [d["id"] for d in corpus]
    out: list[tuple[str, Callable[[str], tuple[str, float | None]]]] = []
    try:
        from langchain_core.vectorstores import InMemoryVectorStore

        from langchain_empirio import EmpirioEmbeddings

        lc = EmpirioEmbeddings(client=client)
        mem = InMemoryVectorStore.from_texts(texts, lc, ids=ids)

        def lc_dense(q: str) -> tuple[str, float | None]:
            doc, score = mem.similarity_search_with_score(q, k=1)[0]
            return str(doc.id), float(score)

        out.append(("LangChain  dense ", lc_dense))
        try:
            from langchain_qdrant import QdrantVectorStore, RetrievalMode

            hybrid = QdrantVectorStore.from_texts(
                texts,
                lc,
                sparse_embedding=lc.sparse(),
                location=":memory:",
                collection_name="demo",
                retrieval_mode=RetrievalMode.HYBRID,
                metadatas=[{"id": i} for i in ids],
            )

            def lc_hybrid(q: str) -> tuple[str, float | None]:
                doc = hybrid.similarity_search(q, k=1)[0]
                return str(doc.metadata["id"]), None

            out.append(("LangChain  hybrid", lc_hybrid))
        except ImportError:
            print("  (langchain-qdrant not installed: skipping hybrid search)")
    except ImportError:
        print("  (langchain-core not installed: skipping the LangChain adapter)")
    try:
        from llama_index.core import VectorStoreIndex
        from llama_index.core.schema import TextNode

        from llamaindex_empirio import EmpirioEmbedding

        nodes = [TextNode(text=t, id_=i) for t, i in zip(texts, ids, strict=True)]
        index = VectorStoreIndex(nodes, embed_model=EmpirioEmbedding(client=client))
        retriever = index.as_retriever(similarity_top_k=1)

        def li_dense(q: str) -> tuple[str, float | None]:
            hit = retriever.retrieve(q)[0]
            return hit.node.node_id, hit.score

        out.append(("LlamaIndex dense ", li_dense))
    except ImportError:
        print("  (llama-index-core not installed: skipping the LlamaIndex adapter)")
    return out


def run_demo(*, dimensions: int = 512, force_emulator: bool = False) -> int:
    """Embed the corpus, run the queries, print hits and cost. Returns an exit status."""
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # a module stubbed out as None, or broken
            return True

    missing = [
        (module, extra)
        for module, extra in (
            ("langchain_core", "langchain"),
            ("llama_index.core", "llamaindex"),
            ("langchain_qdrant", "qdrant"),
        )
        if absent(module)
    ]
    if missing:
        extras = ",".join(extra for _, extra in missing)
        print(
            f"empirio demo: needs {', '.join(m for m, _ in missing)}, not installed: "
            f"pip install 'empirio[server,{extras}]'",
            file=sys.stderr,
        )
        return 1
    use_emulator = force_emulator or not os.environ.get(API_KEY_ENV)
    corpus = load_corpus()
    by_id = {d["id"]: d for d in corpus}
    started = time.perf_counter()
    with _endpoint(use_emulator) as (base_url, key, label):
        print(f"empirio demo: text-embedding-v4 via {label}")
        if use_emulator:
            print(
                "  The emulator's vectors come from hashed tokens, not the real model: texts\n"
                "  that share words score high, but translations do not. Set\n"
                f"  {API_KEY_ENV} to see the real model's cross-lingual search."
            )
        langs = sorted({d["lang"] for d in corpus})
        print(
            f"  {len(corpus)} documents in {len(langs)} languages ({', '.join(langs)}), "
            f"{dimensions} dimensions\n"
        )
        kw: dict[str, Any] = {"rpm": None, "tpm": None} if use_emulator else {}
        with EmbeddingClient(api_key=key, base_url=base_url, dimensions=dimensions, **kw) as client:
            searchers = _searchers(client, corpus)
            for query in QUERIES:
                print(f"query: {query}")
                for name, search in searchers:
                    doc_id, score = search(query)
                    doc = by_id[doc_id]
                    shown = "      " if score is None else f"{score:.3f} "
                    print(f"  {name} [{doc['lang']}] {shown}{_short(doc['text'])}")
            u = client.usage
        took = time.perf_counter() - started
        print(
            f"\n{u.requests} requests, {u.input_tokens:,} tokens, estimated ${u.cost_usd:.6f}, "
            f"{took:.1f} s (the hybrid store got dense and sparse from one request per batch)"
        )
    return 0
