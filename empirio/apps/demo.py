"""``empirio demo``: embed a small multilingual corpus through the LangChain and LlamaIndex
adapters and search it, dense and hybrid, in seconds.

With ``EMPIRIOLABS_API_KEY`` set it uses the real service; without, a local emulator, and says so.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._core.config import API_BASE_ENV, API_KEY_ENV, DEFAULT_BASE_URL, resolve_base_url
from ..client import EmbeddingClient

__all__ = ["QUERIES", "load_corpus", "run_demo"]

#: (language, question). Two have no document in their own language, so a hit there is a
#: cross-lingual one: the real model finds them, and so does the semantic emulator.
QUERIES = (
    ("en", "How do I change my password?"),
    ("zh", "退票政策是什么？"),
    ("de", "Wie produzieren Pflanzen Sauerstoff?"),
    ("es", "¿A qué hora responde el equipo de soporte al chat?"),
)
_LANGUAGES = {"de": "German", "en": "English", "es": "Spanish", "fr": "French", "ja": "Japanese"}
_LANGUAGES["zh"] = "Chinese"


def load_corpus() -> list[dict[str, str]]:
    """The bundled demo corpus: a dozen short texts in six languages (id, lang, text)."""
    raw = importlib.resources.files("empirio").joinpath("data/demo_corpus.jsonl").read_text()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


@contextlib.contextmanager
def _endpoint(use_emulator: bool) -> Iterator[tuple[str | None, str | None, str, str | None]]:
    """(base_url, api_key, label, vectors): the emulator unless a key is present; ``vectors`` is
    what the emulator serves (``"semantic"`` when ``empirio[semantic]`` is installed, else
    ``"hashed"``), ``None`` for a real endpoint."""
    if not use_emulator:
        base = resolve_base_url(None)
        where = (
            "the real EmpirioLabs service"
            if base == DEFAULT_BASE_URL
            else f"{base} (from {API_BASE_ENV})"
        )
        yield None, None, f"{where}, with the key in {API_KEY_ENV}", None
        return
    from ..emulator import EmulatorConfig, serve

    config = EmulatorConfig(vectors="auto")
    with serve(config=config) as url:
        yield url, "emulator-key", f"the LOCAL EMULATOR at {url} (no key set)", config.vectors


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _searchers(
    client: EmbeddingClient, corpus: list[dict[str, str]]
) -> list[tuple[str, Callable[[str], tuple[str, float | None]]]]:
    """(label, search) per framework path; each search returns (doc id, score) of the top hit."""
    texts = [d["text"] for d in corpus]
    ids = [d["id"] for d in corpus]
    out: list[tuple[str, Callable[[str], tuple[str, float | None]]]] = []
    matrix = client.embed(texts).dense
    assert matrix is not None

    def core_dense(q: str) -> tuple[str, float | None]:
        query = client.embed([q], kind="query").dense
        assert query is not None
        scores = matrix @ query[0]
        best = int(scores.argmax())
        return ids[best], float(scores[best])

    out.append(("empirio    dense ", core_dense))
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
            print("  (hybrid search: pip install 'langchain-empirio[qdrant]')")
    except ImportError:
        print("  (LangChain too: pip install langchain-empirio)")
    try:
        from llama_index.core import VectorStoreIndex
        from llama_index.core.schema import TextNode

        from llama_index.embeddings.empirio import EmpirioEmbedding

        nodes = [TextNode(text=t, id_=i) for t, i in zip(texts, ids, strict=True)]
        index = VectorStoreIndex(nodes, embed_model=EmpirioEmbedding(client=client))
        retriever = index.as_retriever(similarity_top_k=1)

        def li_dense(q: str) -> tuple[str, float | None]:
            hit = retriever.retrieve(q)[0]
            return hit.node.node_id, hit.score

        out.append(("LlamaIndex dense ", li_dense))
    except ImportError:
        print("  (LlamaIndex too: pip install llama-index-embeddings-empirio)")
    return out


def run_demo(*, dimensions: int = 512, force_emulator: bool = False) -> int:
    """Embed the corpus, run the queries, print hits and cost. Returns an exit status."""
    use_emulator = force_emulator or not os.environ.get(API_KEY_ENV)
    corpus = load_corpus()
    by_id = {d["id"]: d for d in corpus}
    started = time.perf_counter()
    with _endpoint(use_emulator) as (base_url, key, label, vectors):
        print(f"empirio demo: text-embedding-v4 via {label}")
        if vectors is not None:
            from ..emulator import describe_vectors

            about = f"The emulator serves {describe_vectors(vectors)}. Set {API_KEY_ENV} to search "
            print(
                textwrap.fill(
                    about + "with text-embedding-v4 itself.",
                    92,
                    initial_indent="  ",
                    break_on_hyphens=False,
                    subsequent_indent="  ",
                )
            )
        langs = sorted({d["lang"] for d in corpus})
        print(
            f"  {len(corpus)} documents in {len(langs)} languages ({', '.join(langs)}), "
            f"{dimensions} dimensions\n"
        )
        kw: dict[str, Any] = {"rpm": None, "tpm": None} if use_emulator else {}
        with EmbeddingClient(api_key=key, base_url=base_url, dimensions=dimensions, **kw) as client:
            searchers = _searchers(client, corpus)
            for lang, query in QUERIES:
                print(f"query: {query}")
                for name, search in searchers:
                    doc_id, score = search(query)
                    doc = by_id[doc_id]
                    shown = "      " if score is None else f"{score:.3f} "
                    across = (
                        f"  <- asked in {_LANGUAGES[lang]}, found in {_LANGUAGES[doc['lang']]}"
                        if doc["lang"] != lang
                        else ""
                    )
                    print(f"  {name} [{doc['lang']}] {shown}{_short(doc['text'], 48)}{across}")
            u = client.usage
        took = time.perf_counter() - started
        print(
            f"\n{u.requests} requests, {u.input_tokens:,} tokens, estimated ${u.cost_usd:.6f}, "
            f"{took:.1f} s"
            + (
                " (the hybrid store got dense and sparse from one request per batch)"
                if any("hybrid" in name for name, _ in searchers)
                else ""
            )
        )
    return 0
