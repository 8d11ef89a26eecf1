"""``empirio demo``: embed a small multilingual corpus and search it, in seconds.

With ``EMPIRIOLABS_API_KEY`` set it uses the real service; without, a local emulator, and says so.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import time
from collections.abc import Iterator

import numpy as np

from ._client import EmbeddingClient
from ._config import API_KEY_ENV

__all__ = ["run_demo"]

QUERIES = (
    "How do I change my password?",
    "退票政策是什么？",
    "how do plants make oxygen",
    "when can I talk to customer support",
)


def load_corpus() -> list[dict[str, str]]:
    """The bundled demo corpus: a dozen short texts in seven languages."""
    raw = importlib.resources.files("empirio").joinpath("data/demo_corpus.jsonl").read_text()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


@contextlib.contextmanager
def _endpoint(use_emulator: bool) -> Iterator[tuple[str | None, str | None, str]]:
    """(base_url, api_key, label) for the demo: the emulator unless a key is present."""
    if not use_emulator:
        yield None, None, "the real EmpirioLabs service (EMPIRIOLABS_API_KEY is set)"
        return
    from .emulator import serve

    with serve() as url:
        yield url, "emulator-key", f"the LOCAL EMULATOR at {url} (no key set)"


def run_demo(*, dimensions: int = 512, force_emulator: bool = False) -> int:
    """Embed the corpus, run the queries, print hits and cost. Returns an exit status."""
    use_emulator = force_emulator or not os.environ.get(API_KEY_ENV)
    corpus = load_corpus()
    started = time.perf_counter()
    with _endpoint(use_emulator) as (base_url, key, label):
        print(f"empirio demo: text-embedding-v4 via {label}")
        if use_emulator:
            print(
                "  The emulator's vectors come from hashed tokens, not the real model: related\n"
                "  texts that share words score high, but translations do not. Set\n"
                f"  {API_KEY_ENV} to see the real model's cross-lingual search."
            )
        rpm = None if use_emulator else 50
        with EmbeddingClient(
            api_key=key, base_url=base_url, dimensions=dimensions, rpm=rpm
        ) as client:
            docs = client.embed([d["text"] for d in corpus], output="both")
            queries = client.embed(list(QUERIES), kind="query", output="both")
            assert docs.dense is not None
            assert queries.dense is not None
            assert docs.sparse is not None
            assert queries.sparse is not None
            dense_scores = queries.dense @ docs.dense.T
            for qi, query in enumerate(QUERIES):
                sparse_scores = np.array(
                    [
                        sum(w * d.get(k, 0.0) for k, w in queries.sparse[qi].items())
                        for d in docs.sparse
                    ]
                )
                top_sparse = sparse_scores.max() or 1.0
                hybrid = 0.7 * dense_scores[qi] + 0.3 * sparse_scores / top_sparse
                print(f"\nquery: {query}")
                for rank, di in enumerate(np.argsort(-hybrid)[:3], 1):
                    doc = corpus[di]
                    text = doc["text"] if len(doc["text"]) <= 70 else doc["text"][:67] + "..."
                    print(
                        f"  {rank}. [{doc['lang']}] dense {dense_scores[qi, di]:.3f}  "
                        f"hybrid {hybrid[di]:.3f}  {text}"
                    )
            u = client.usage
        took = time.perf_counter() - started
        print(
            f"\n{len(corpus)} documents + {len(QUERIES)} queries at {dimensions} dimensions "
            f"(dense and sparse from one request each): {u.requests} requests, "
            f"{u.input_tokens:,} tokens, estimated ${u.cost_usd:.6f}, {took:.1f} s"
        )
    return 0
